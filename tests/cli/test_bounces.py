"""`mailer bounces receive` as an MTA runs it: a process reading one message on stdin."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import insert, select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import BounceEvent, Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from mailer.tokens import BOUNCE, MESSAGE_ID
from tests.helpers.bounces import arf, dsn, vacation
from tests.helpers.delivery import add_readers, new_issue
from tests.helpers.servers import ROOT, free_port

BOUNCE_DOMAIN = "bounces.daily.example"


def receive(env: dict, message: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bounces", "receive", *args],
        input=message, env={**env, "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN}, cwd=ROOT,
        capture_output=True, timeout=60,
    )


@pytest.fixture
def sent(app):
    """A reader with a delivered message: (email, delivery id, the message's head, VERP)."""
    rt = app.extensions["mailer"]
    (email,) = add_readers(1)
    issue_id = new_issue()
    with db.transaction() as s:
        sub_id = s.scalar(select(Subscriber.id).where(Subscriber.email == email))
        did = s.execute(
            insert(Delivery).values(issue_id=issue_id, subscriber_id=sub_id,
                                    status=DeliveryStatus.SENT, attempts=1, sent_at=utcnow())
            .returning(Delivery.id)
        ).scalar()
    token = rt.tokens.sign(BOUNCE, str(did))
    tag = rt.tokens.keyed_hash(MESSAGE_ID, str(did))[:10]
    head = (
        f"From: The Daily <news@daily.example>\r\nTo: <{email}>\r\nSubject: Today\r\n"
        f"Message-ID: <{did}.{tag}@daily.example>\r\nX-Delivery-Token: {token}\r\n\r\nHi\r\n"
    ).encode()
    return email, did, head, f"bounces+{token}@{BOUNCE_DOMAIN}"


def status_of(email: str) -> str:
    with db.transaction() as s:
        return s.scalar(select(Subscriber.status).where(Subscriber.email == email))


def test_a_dsn_is_recorded_once_and_bounces_the_reader(env, sent):
    email, did, head, verp = sent
    message = dsn(head, email, to=verp)
    first = receive(env, message, "--recipient", verp)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode().startswith("recorded: hard from pipe about reader ")
    assert "(now bounced)" in first.stdout.decode()
    assert status_of(email) == SubscriberStatus.BOUNCED
    again = receive(env, message)  # the MTA delivered it twice
    assert again.returncode == 0 and again.stdout.decode().startswith("duplicate: hard report")
    with db.transaction() as s:
        assert s.scalars(select(BounceEvent.delivery_id)).all() == [did]


def test_a_complaint_with_the_headers_only(env, sent):
    email, _, head, _ = sent
    done = receive(env, arf(head, None))
    assert done.returncode == 0 and "(now complained)" in done.stdout.decode()
    assert status_of(email) == SubscriberStatus.COMPLAINED


@pytest.mark.parametrize(
    "message, said",
    [
        (b"", "ignored: an empty message"),
        (b"\x00\xff junk \x80" * 1000, "ignored: not a delivery report"),
        (b"x" * (20 * 1024 * 1024), "ignored: larger than 2097152 bytes"),
    ],
    ids=["empty", "junk", "20 MB"],
)
def test_bad_input_exits_0_with_a_reason(env, app, message, said):
    done = receive(env, message)
    assert (done.returncode, done.stdout.decode().strip(), done.stderr) == (0, said, b"")


def test_an_auto_reply_and_a_forged_token_change_nothing(env, sent):
    email, _, head, verp = sent
    done = receive(env, vacation("news@daily.example", email))
    assert done.stdout.decode().strip() == "ignored: an auto-reply, not a delivery report"
    forged = verp.replace("bounces+", "bounces+1")
    done = receive(env, dsn(head.replace(b"X-Delivery-Token", b"X-Other"), email), "--recipient",
                   forged)
    assert (done.returncode, done.stdout.decode().strip()) == (
        0, "ignored: forged or unknown bounce token"
    )
    assert status_of(email) == SubscriberStatus.ACTIVE


def test_an_unreachable_database_asks_the_mta_to_try_again(env, sent, db_kind, tmp_path):
    email, _, head, verp = sent
    if db_kind == "postgres":
        broken = f"postgresql://nobody@127.0.0.1:{free_port()}/mailer"
    else:
        broken = f"sqlite:///{tmp_path}/no/such/folder/mailer.sqlite"
    done = receive({**env, "MAILER_DATABASE_URL": broken}, dsn(head, email, to=verp))
    assert done.returncode == 75
    err = done.stderr.decode()
    assert err.startswith("mailer: not recorded, try again later: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert status_of(email) == SubscriberStatus.ACTIVE

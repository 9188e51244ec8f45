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


# What an MTA starts once per bounce must not build the app: Flask, Celery and the modules of
# the pages and the tasks were most of each process's cost (about 0.8 s of CPU against 0.5 s).
NOT_FOR_THE_PIPE = ("flask", "werkzeug", "jinja2", "celery", "kombu", "mailer.web",
                    "mailer.tasks", "mailer.runtime", "mailer.celery_app")


def imported(stderr: bytes) -> set[str]:
    """The modules a process imported, from its `python -X importtime` lines."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.decode().splitlines()
            if line.startswith("import time:") and line.count("|") == 2} - {"imported package"}


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in NOT_FOR_THE_PIPE
            or any(m == p or m.startswith(p + ".") for p in NOT_FOR_THE_PIPE)}


def test_the_pipe_records_without_loading_the_app(env, sent):
    email, _, head, verp = sent
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mailer.cli", "bounces", "receive",
         "--recipient", verp],
        input=dsn(head, email, to=verp), env={**env, "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN},
        cwd=ROOT, capture_output=True, timeout=60,
    )
    assert done.returncode == 0 and "(now bounced)" in done.stdout.decode(), done.stderr[-2000:]
    modules = imported(done.stderr)
    assert {"mailer.services.bounces", "mailer.bounces.parse", "sqlalchemy"} <= modules
    assert heavy(modules) == set()
    assert status_of(email) == SubscriberStatus.BOUNCED


def test_a_webhook_event_of_the_pipe_still_reaches_the_broker(app, env, sent):
    """The one case that needs Celery: a report that changes a reader an endpoint follows.
    The task is handed over after the commit, like everywhere else."""
    from mailer.models import HookDelivery
    from mailer.services import hook_endpoints
    from mailer.tasks.queues import HOOKS_QUEUE, broker_backlog

    email, _, head, verp = sent
    with db.transaction() as s:
        hook_endpoints.create(s, url="http://127.0.0.1:9/hooks", events="subscriber.bounced",
                              personal_data=False, allow_http=True, allow_private=True)
    settings = app.extensions["mailer.settings"]
    waiting = broker_backlog(settings)[HOOKS_QUEUE]
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mailer.cli", "bounces", "receive",
         "--recipient", verp],
        input=dsn(head, email, to=verp), env={**env, "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN},
        cwd=ROOT, capture_output=True, timeout=60,
    )
    assert done.returncode == 0 and "(now bounced)" in done.stdout.decode(), done.stderr[-2000:]
    assert "celery" in imported(done.stderr)  # built for the hand-over, after the commit
    assert broker_backlog(settings)[HOOKS_QUEUE] == waiting + 1
    with db.transaction() as s:
        handed = s.scalars(select(HookDelivery.handed_out_at)).all()
    assert len(handed) == 1 and handed[0] is not None

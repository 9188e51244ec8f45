"""The bounce mailbox on a real IMAP server (dovecot): fetched by UID, recorded, filed away;
one poller at a time; a dead server loses nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from sqlalchemy import func, select

from mailer.bounces.mailbox import MailboxError
from mailer.db import db
from mailer.models import BounceEvent, Subscriber, SubscriberStatus
from mailer.tasks.bounces import poll
from mailer.tokens import BOUNCE
from tests.helpers.bounces import arf, dsn, sending_issue, vacation
from tests.helpers.imap import Dovecot
from tests.helpers.servers import ROOT, free_port

USER, PASSWORD = "bounces", "a-long-test-password"


@pytest.fixture(scope="module")
def dovecot():
    server = Dovecot({USER: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(dovecot):
    """An empty INBOX and no Processed folder for each test."""
    with dovecot.client(USER) as c:
        for folder in ("INBOX", "Processed"):
            if c.folder_exists(folder):
                c.select_folder(folder)
                uids = c.search(["ALL"])
                if uids:
                    c.delete_messages(uids)
                    c.expunge()
                c.close_folder()
        if c.folder_exists("Processed"):
            c.delete_folder("Processed")
    return dovecot


def settings_for(rt, server: Dovecot, **kw):
    return replace(rt.settings, bounce_mailbox=server.url(USER),
                   bounce_mailbox_ca_file=server.ca_file, **kw)


def head_of(rt, delivery_id: int, email: str) -> bytes:
    token = rt.tokens.sign(BOUNCE, str(delivery_id))
    return (f"From: The Daily <news@daily.example>\r\nTo: <{email}>\r\nSubject: Today\r\n"
            f"X-Delivery-Token: {token}\r\n\r\nHi\r\n").encode()


def statuses(emails) -> list[str]:
    with db.transaction() as s:
        by = dict(s.execute(select(Subscriber.email, Subscriber.status)
                            .where(Subscriber.email.in_(emails))).all())
    return [str(by[e]) for e in emails]


def events() -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(BounceEvent))


def test_poll_records_each_message_and_moves_it(rt, mailbox):
    _, dids, emails = sending_issue(3)
    mailbox.deliver(USER, dsn(head_of(rt, dids[0], emails[0]), emails[0]))
    mailbox.deliver(USER, arf(head_of(rt, dids[1], emails[1]), None))
    mailbox.deliver(USER, vacation("news@daily.example", emails[2]))
    mailbox.deliver(USER, b"\x00\x01 not mail at all")
    result = poll(settings_for(rt, mailbox))
    assert result.messages == 4
    assert result.results == {"recorded": 2, "ignored": 2}
    assert statuses(emails) == ["bounced", "complained", "active"]
    assert (mailbox.count(USER, "INBOX"), mailbox.count(USER, "Processed")) == (0, 4)
    again = poll(settings_for(rt, mailbox))
    assert (again.messages, again.results) == (0, {})


def test_starttls_and_delete_instead_of_move(rt, mailbox):
    _, dids, emails = sending_issue(1)
    mailbox.deliver(USER, dsn(head_of(rt, dids[0], emails[0]), emails[0], status="4.2.2"))
    settings = replace(settings_for(rt, mailbox), bounce_mailbox=mailbox.url(USER, tls=False),
                       bounce_mailbox_done="delete")
    assert poll(settings).results == {"recorded": 1}
    assert (mailbox.count(USER, "INBOX"), mailbox.count(USER, "Processed")) == (0, 0)
    with db.transaction() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == emails[0]))
        assert (sub.status, sub.bounce_score) == (SubscriberStatus.ACTIVE, 1)


def test_two_pollers_at_once_record_each_report_once(app, rt, mailbox):
    _, dids, emails = sending_issue(30)
    for did, email in zip(dids, emails, strict=True):
        mailbox.deliver(USER, dsn(head_of(rt, did, email), email))
    settings = settings_for(rt, mailbox)
    start = threading.Barrier(2)
    results = []

    def run(name):
        with app.app_context():
            start.wait()
            results.append(poll(settings, holder=name))

    threads = [threading.Thread(target=run, args=(f"poller-{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One of them ran (the other saw the lock), or they ran one after the other: either
    # way every message was recorded once and filed away once.
    assert sum(r.messages for r in results) == 30
    assert any(r.skipped == "another poller is running" for r in results) or all(
        r.skipped is None for r in results)
    assert events() == 30 and set(statuses(emails)) == {"bounced"}
    assert (mailbox.count(USER, "INBOX"), mailbox.count(USER, "Processed")) == (0, 30)


def test_a_dead_server_loses_nothing_and_says_so(rt, mailbox, env):
    _, dids, emails = sending_issue(1)
    settings = replace(settings_for(rt, mailbox),
                       bounce_mailbox=f"imaps://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/INBOX")
    with pytest.raises(MailboxError, match=r"^imaps://bounces@127\.0\.0\.1:\d+/INBOX: "):
        poll(settings)
    # The lock was given back: the next poll, on a live server, works.
    mailbox.deliver(USER, dsn(head_of(rt, dids[0], emails[0]), emails[0]))
    assert poll(settings_for(rt, mailbox)).results == {"recorded": 1}

    run = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bounces", "poll"], cwd=ROOT, capture_output=True,
        env={**env, "MAILER_BOUNCE_MAILBOX": settings.bounce_mailbox}, timeout=60,
    )
    err = run.stderr.decode()
    assert run.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("mailer: the bounce mailbox cannot be read now, nothing was lost: ")
    assert PASSWORD not in err


def test_mailer_bounces_poll_by_hand(rt, mailbox, env):
    _, dids, emails = sending_issue(2)
    for did, email in zip(dids, emails, strict=True):
        mailbox.deliver(USER, dsn(head_of(rt, did, email), email))
    run = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bounces", "poll"], cwd=ROOT, capture_output=True,
        env={**env, "MAILER_BOUNCE_MAILBOX": mailbox.url(USER),
             "MAILER_BOUNCE_MAILBOX_CA_FILE": mailbox.ca_file}, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().strip() == "2 messages: 2 recorded"
    assert statuses(emails) == ["bounced", "bounced"]

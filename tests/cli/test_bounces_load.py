"""Many reports through `mailer bounces receive` by several processes at once: each
recorded once, none lost; and reports that would be expensive or dangerous to get wrong."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from mailer.db import db
from mailer.models import BounceEvent, BounceReportCount, Subscriber
from mailer.services import subscriptions as subs
from mailer.tokens import BOUNCE
from tests.helpers.bounces import dsn, sending_issue
from tests.helpers.servers import ROOT

REPORTS = 15  # each piped twice by 6 processes at once: 30 processes (CI-sized)
AT_ONCE = 6


def receive(env: dict, message: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailer.cli", "bounces", "receive"],
                          input=message, env=env, cwd=ROOT, capture_output=True, timeout=120)


def head_of(rt, delivery_id: int, email: str) -> bytes:
    token = rt.tokens.sign(BOUNCE, str(delivery_id))
    return (f"From: The Daily <news@daily.example>\r\nTo: <{email}>\r\nSubject: Today\r\n"
            f"X-Delivery-Token: {token}\r\n\r\nHi\r\n").encode()


def test_many_reports_from_many_processes_are_each_recorded_once(app, env):
    rt = app.extensions["mailer"]
    _, dids, emails = sending_issue(REPORTS)
    messages = [dsn(head_of(rt, d, e), e) for d, e in zip(dids, emails, strict=True)]
    with ThreadPoolExecutor(AT_ONCE) as pool:
        done = list(pool.map(lambda m: receive(env, m), messages + messages))
    assert [d.returncode for d in done] == [0] * (2 * REPORTS), [d.stderr for d in done][:3]
    said = [d.stdout.decode().split(":")[0] for d in done]
    assert (said.count("recorded"), said.count("duplicate")) == (REPORTS, REPORTS)
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(BounceEvent)) == REPORTS
        assert set(s.scalars(select(Subscriber.status).where(Subscriber.email.in_(emails)))) == {
            "bounced"}
        counted = dict(s.execute(select(BounceReportCount.result, BounceReportCount.n)
                                 .where(BounceReportCount.source == "pipe")).all())
    assert counted == {"recorded": REPORTS, "duplicate": REPORTS}


def test_a_report_for_an_erased_reader_and_one_naming_a_thousand(app, env):
    rt = app.extensions["mailer"]
    _, dids, emails = sending_issue(2)
    with db.transaction() as s:
        subs.erase(s, s.scalar(select(Subscriber).where(Subscriber.email == emails[0])),
                   rt.email_hash)
    done = receive(env, dsn(head_of(rt, dids[0], emails[0]), emails[0]))
    assert (done.returncode, done.stdout.decode().strip()) == (
        0, "ignored: the reader erased their data")

    many = [f"stranger{k}@example.org" for k in range(999)] + [emails[1]]
    done = receive(env, dsn(b"From: x@example.org\r\n\r\nx\r\n", many))
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0 and len(lines) == 51
    assert lines[-1] == "ignored: 950 more recipients not read"
    assert set(lines[:-1]) == {"ignored: about nobody we mailed recently"}

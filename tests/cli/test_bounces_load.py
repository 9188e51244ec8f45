"""Many reports through `mailer bounces receive` by several processes at once and through
`mailer bounces lmtp` over several connections: each recorded once, none lost; and reports
that would be expensive or dangerous to get wrong."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from mailer.db import db
from mailer.models import BounceEvent, BounceReportCount, Subscriber
from mailer.services import subscriptions as subs
from tests.helpers.bounces import (
    LmtpReceiver,
    Mta,
    arf,
    crlf,
    dsn,
    returned,
    sending_issue,
    verp,
)
from tests.helpers.servers import ROOT, wait_until

REPORTS = 15  # each piped twice by 6 processes at once: 30 processes (CI-sized)
AT_ONCE = 6


def receive(env: dict, message: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailer.cli", "bounces", "receive"],
                          input=message, env=env, cwd=ROOT, capture_output=True, timeout=120)


def test_many_reports_from_many_processes_are_each_recorded_once(app, env):
    rt = app.extensions["mailer"]
    _, dids, emails = sending_issue(REPORTS)
    messages = [dsn(returned(rt.tokens, d, e), e) for d, e in zip(dids, emails, strict=True)]
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
    done = receive(env, dsn(returned(rt.tokens, dids[0], emails[0]), emails[0]))
    assert (done.returncode, done.stdout.decode().strip()) == (
        0, "ignored: the reader erased their data")

    many = [f"stranger{k}@example.org" for k in range(999)] + [emails[1]]
    done = receive(env, dsn(b"From: x@example.org\r\n\r\nx\r\n", many))
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0 and len(lines) == 51
    assert lines[-1] == "ignored: 950 more recipients not read"
    assert set(lines[:-1]) == {"ignored: about nobody we mailed recently"}


# --- Over LMTP: the MTA's deliveries to one long-running `mailer bounces lmtp` -----------

DISTINCT = 10_000  # reports, each about its own reader
AGAIN = 2_000  # of them delivered a second time, at random moments
CONNECTIONS = 6  # the MTA's concurrent LMTP connections
BOUNCE_DOMAIN = "bounces.daily.example"


def lmtp_reports(rt, dids, emails):
    """A quarter each: a hard DSN to the VERP address (nothing else of ours in it), a soft
    one the same way, a headers-only complaint (our token in the returned headers) and a
    hard DSN to the plain bounce address naming only the reader's address. With what each
    reader must end as: (status, bounce score)."""
    plain = f"bounces@{BOUNCE_DOMAIN}"
    items, expected = [], {}
    for k, (did, email) in enumerate(zip(dids, emails, strict=True)):
        to = verp(rt.tokens, did, BOUNCE_DOMAIN)
        theirs = returned(rt.tokens, did, email, ours=False)
        if k % 4 == 0:
            items.append((dsn(theirs, email, headers_only=True), to))
            expected[email] = ("bounced", 0)
        elif k % 4 == 1:
            items.append((dsn(theirs, email, status="4.2.2", headers_only=True), to))
            expected[email] = ("active", 1)
        elif k % 4 == 2:
            items.append((arf(returned(rt.tokens, did, email), None), plain))
            expected[email] = ("complained", 0)
        else:
            items.append((dsn(theirs, email), plain))
            expected[email] = ("bounced", 0)
    return [(crlf(m), r) for m, r in items], expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ten_thousand_reports_over_lmtp_each_counted_once(app, env, db_kind, tmp_path):
    """10,000 reports and 2,000 second copies over 6 connections to the real server, whose
    database connections are cut a third of the way (PostgreSQL) and which is killed with
    SIGKILL and started again two thirds of the way: every report counted once, none lost,
    the copies said as duplicates."""
    rt = app.extensions["mailer"]
    started = time.monotonic()
    _, dids, emails = sending_issue(DISTINCT)
    items, expected = lmtp_reports(rt, dids, emails)
    rng = random.Random(11)
    order = list(range(DISTINCT)) + rng.sample(range(DISTINCT), AGAIN)
    rng.shuffle(order)
    ready = time.monotonic()

    name = "mailer-lmtp-load"  # the server's database sessions, to cut them
    lmtp_env = {**env, "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN}
    if db_kind == "postgres":
        sep = "&" if "?" in env["MAILER_DATABASE_URL"] else "?"
        lmtp_env["MAILER_DATABASE_URL"] += f"{sep}application_name={name}"
    receiver = LmtpReceiver(lmtp_env, tmp_path / "lmtp.log").start()
    mta = Mta(receiver, items, order)
    sender = threading.Thread(target=mta.run, args=(CONNECTIONS,))
    sender.start()
    try:
        total = len(order)
        if db_kind == "postgres":
            wait_until(lambda: mta.answered >= total // 3, timeout=300, what="a third")
            with db.transaction() as s:
                cut = s.scalar(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"), {"name": name})
            assert cut >= 1
        wait_until(lambda: mta.answered >= 2 * total // 3, timeout=300, what="two thirds")
        receiver.kill()
        receiver.start()
        sender.join(600)
        assert not sender.is_alive()
    finally:
        assert receiver.stop() == 0
    took = time.monotonic() - ready
    assert "Traceback" not in receiver.output()

    words = [w for said in mta.answers for w in said]
    assert (len(words), set(words)) == (DISTINCT + AGAIN, {"recorded", "duplicate"})
    assert max(said.count("recorded") for said in mta.answers) == 1
    assert mta.again["dropped"] >= 1  # the kill was felt
    if db_kind == "postgres":
        assert mta.again["451"] >= 1  # so was the cut
    with db.transaction() as s:
        events = dict(s.execute(select(BounceEvent.kind, func.count())
                                .group_by(BounceEvent.kind)).all())
        readers = {e: (str(st), score) for e, st, score in s.execute(
            select(Subscriber.email, Subscriber.status, Subscriber.bounce_score)
            .where(Subscriber.email.in_(emails)))}
        counted = dict(s.execute(select(BounceReportCount.result, BounceReportCount.n)
                                 .where(BounceReportCount.source == "lmtp")).all())
    assert {str(k): n for k, n in events.items()} == {
        "hard": DISTINCT // 2, "soft": DISTINCT // 4, "complaint": DISTINCT // 4}
    assert sum(readers[e] == expected[e] for e in emails) == DISTINCT
    assert set(counted) == {"recorded", "duplicate"} and counted["recorded"] == DISTINCT
    # A reply lost to the kill after its commit: the message came again and was said to be
    # a duplicate. Only the messages in hand at the kill can be such.
    lost_recorded = DISTINCT - words.count("recorded")
    lost_duplicate = counted["duplicate"] - words.count("duplicate")
    assert lost_recorded >= 0 and lost_duplicate >= 0
    assert lost_recorded + lost_duplicate <= CONNECTIONS
    print(f"\nLMTP load ({db_kind}): {DISTINCT} reports + {AGAIN} copies in {took:.1f} s "
          f"({DISTINCT / took:.0f} reports/s), setup {ready - started:.1f} s, delivered "
          f"again: {mta.again}, replies lost to the kill: {lost_recorded + lost_duplicate}")

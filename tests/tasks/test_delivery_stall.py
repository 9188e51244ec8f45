"""A worker that is alive but stalled (stopped, starved of CPU) for longer than its heartbeat
timeout, in the middle of a send.

The sweeper takes it for dead: the rows it held but had not begun go back to pending and
another worker sends them; the group it had on the wire becomes `uncertain`. When the
stalled worker runs again it must not send any row it no longer holds, and what it does
record (the group it had begun) beats the sweeper's guess. No reader gets two copies.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import text

from mailer.db import db
from mailer.services import deliveries
from tests.helpers.app import make_app
from tests.helpers.delivery import (
    Sweeper,
    add_readers,
    delivery_states,
    make_renderer,
    new_issue,
    own_broker,
    per_recipient,
    wait_finished,
)
from tests.helpers.servers import WorkerProcess, children, wait_until

GROUP = 20
CONCURRENCY = 2


def stop_outside_a_transaction(pids: list[int]) -> None:
    """SIGSTOP the processes, but not while one of them is inside a transaction that wrote:
    its row locks would hold the sweeper up until it runs again (a stall that long is a
    database problem, not the one tested here). And only while they hold rows not tried
    yet ("q:<token>:<worker>"), the rows the sweeper gives back once their heartbeats
    lapse: stopped between two groups' last tries, they would hold none, and nothing would
    be given back for the other worker to take over."""
    for _ in range(100):
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        with db.engine.connect() as conn:
            writing = conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%' AND backend_xid IS NOT NULL"))
            held = conn.scalar(text(
                "SELECT count(*) FROM deliveries WHERE status = 'sending'"
                " AND claimed_by LIKE 'q:%:%'"))
        if not writing and held:
            return
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never held untried rows outside a transaction that wrote")


# PostgreSQL only: in the embedded mode a process stopped inside its transaction holds
# SQLite's one write lock, so nothing at all moves until it runs again.
@pytest.mark.slow
@pytest.mark.redis
def test_a_stalled_worker_whose_heartbeat_lapsed_sends_nobody_twice(app, env, smtp, tmp_path):
    env = own_broker(
        env,
        tmp_path,
        MAILER_WORKER_HEARTBEAT="1",
        MAILER_WORKER_TIMEOUT="3",
        MAILER_WORKER_TICK="off",
        MAILER_SEND_GROUP=str(GROUP),
        MAILER_SEND_BATCH="100",
        MAILER_SEND_WINDOW="6",
        MAILER_RATE_LIMIT="400",
    )
    steering = make_app(env)
    emails = add_readers(2000, names=False)
    args = ["--pool", "prefork", "--concurrency", str(CONCURRENCY)]
    stalled = WorkerProcess(env, tmp_path / "stalled.log", args=args).start()
    other = None
    try:
        with steering.app_context():
            issue_id = new_issue()
            with db.transaction() as s:  # the commit hands the batches to the worker
                deliveries.start_send(
                    s, issue_id, settings=steering.extensions["mailer.settings"],
                    render=make_renderer(size=5000),
                )
        with Sweeper(steering, every=0.3) as sweeper:
            wait_until(lambda: len(smtp.messages) >= 200, 60, 0.01, what="200 messages")
            # Stop the whole worker mid-group: its processes are alive, but their
            # heartbeats stop, as under a long CPU starvation or a paused VM.
            pids = [stalled.proc.pid, *children(stalled.proc.pid)]
            stop_outside_a_transaction(pids)
            stopped_at = len(smtp.messages)
            try:
                # Another worker takes over what the sweeper gives back once the
                # stalled processes' heartbeats lapse.
                other = WorkerProcess(env, tmp_path / "other.log", args=args).start()
                wait_until(
                    lambda: any(r.get("requeued") for r in sweeper.results),
                    30, 0.1, what="the sweeper to give back the stalled worker's rows",
                )
                wait_until(lambda: len(smtp.messages) >= stopped_at + 200, 60, 0.01,
                           what="the other worker to send what was given back")
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            time.sleep(2)  # the stalled worker carries on with what it had in hand
            assert wait_finished(issue_id, 300) == "finished", other.log()
    finally:
        stalled.stop()
        if other is not None:
            other.stop()

    got = per_recipient(smtp, emails)
    states = delivery_states(issue_id)
    twice = sorted(e for e, n in got.items() if n > 1)
    assert twice == [], f"{len(twice)} readers got two copies, e.g. {twice[:5]}"
    assert set(states) == set(emails)
    assert set(states.values()) <= {"sent", "uncertain"}
    assert all(got[e] == 1 for e, st in states.items() if st == "sent")
    # Uncertain: the group each stalled process had on the wire, at most.
    assert list(states.values()).count("uncertain") <= CONCURRENCY * GROUP


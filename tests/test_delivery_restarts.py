"""Broker and server restarts mid-send: Redis (queue and rate limiter) and the SMTP server.

Redis runs without persistence here, so a restart loses every queued batch as well as the
limiter's state: the sweeper has to notice the lost batches and hand them out again.
"""

from __future__ import annotations

import time

import pytest

from mailer.db import db
from mailer.services import deliveries
from tests.conftest import make_app
from tests.mail.delivery_support import (
    Sweeper,
    add_readers,
    delivery_states,
    make_renderer,
    new_issue,
    own_broker,
    per_recipient,
    wait_finished,
)
from tests.support import WorkerProcess, wait_until

GROUP = 20


def send_through(env, tmp_path, smtp, readers: int, disrupt) -> tuple[dict, dict]:
    """Send an issue with a real worker, calling disrupt() once 300 messages are out."""
    env = own_broker(
        env,
        tmp_path,
        MAILER_SEND_LEASE="3",
        MAILER_SEND_GROUP=str(GROUP),
        MAILER_SEND_BATCH="100",
        MAILER_RATE_LIMIT="500",
    )
    steering = make_app(env)
    emails = add_readers(readers, names=False)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        with steering.app_context():
            issue_id = new_issue()
            with db.transaction() as s:  # the commit hands the batches to the workers
                deliveries.start_send(
                    s, issue_id, settings=steering.extensions["mailer.settings"],
                    render=make_renderer(size=5000),
                )
        with Sweeper(steering):
            wait_until(lambda: len(smtp.messages) >= 300, 60, 0.01, what="300 messages")
            disrupt()
            assert len(smtp.messages) < readers, "the restart must happen mid-send"
            assert wait_finished(issue_id, 120) == "finished", worker.log()
    finally:
        worker.stop()
    return per_recipient(smtp, emails), delivery_states(issue_id)


def check_exactly_once(got: dict, states: dict, bound: int) -> None:
    uncertain = [e for e, st in states.items() if st == "uncertain"]
    assert set(states.values()) <= {"sent", "uncertain"}
    assert all(got[e] == 1 for e, st in states.items() if st == "sent")
    assert all(got[e] <= 1 for e in uncertain)
    assert len(uncertain) <= bound
    assert len(states) == len(got)


@pytest.mark.slow
@pytest.mark.redis
def test_redis_restarted_mid_send(app, env, smtp, redis_server, tmp_path):
    got, states = send_through(
        env, tmp_path, smtp, 1500, lambda: redis_server.restart(down_for=1.0)
    )
    check_exactly_once(got, states, bound=2 * GROUP)
    assert sum(got.values()) == len(got)  # nothing was lost at all: Redis holds no claims


@pytest.mark.slow
@pytest.mark.redis
def test_smtp_server_restarted_mid_send(app, env, smtp, tmp_path):
    def restart():
        smtp.stop()
        time.sleep(1.0)
        smtp.start()

    got, states = send_through(env, tmp_path, smtp, 1500, restart)
    # A connection cut while waiting for the answer to a message's data leaves that one
    # message uncertain: at most one per worker process.
    check_exactly_once(got, states, bound=2)

"""MAILER_RATE_LIMIT holds across worker processes: two workers share one bucket in Redis."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.models import Delivery
from mailer.services import deliveries
from tests.helpers.app import make_app
from tests.helpers.delivery import (
    add_readers,
    make_renderer,
    new_issue,
    own_broker,
    wait_finished,
)
from tests.helpers.servers import WorkerProcess

RATE = 100


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.alone  # a rate measured while other tests load the machine falls short
def test_two_workers_stay_within_ten_percent_of_the_limit(app, env, smtp, tmp_path):
    env = own_broker(env, tmp_path, MAILER_RATE_LIMIT=str(RATE), MAILER_SEND_BATCH="20")
    steering = make_app(env)
    add_readers(700, names=False)
    workers = [
        WorkerProcess(
            env, tmp_path / f"worker{k}.log", args=["--pool", "prefork", "--concurrency", "1"]
        )
        for k in range(2)
    ]
    try:
        for w in workers:
            w.start()
        with steering.app_context():
            issue_id = new_issue()
            with db.transaction() as s:  # the commit hands the batches to the workers
                deliveries.start_send(
                    s, issue_id, settings=steering.extensions["mailer.settings"],
                    render=make_renderer(size=3000),
                )
            assert wait_finished(issue_id, 60) == "finished"
    finally:
        for w in workers:
            w.stop()

    times = sorted(m.at for m in smtp.messages)
    assert len(times) == 700
    overall = (len(times) - 1) / (times[-1] - times[0])
    # Every one-second window, not just the average: smooth, not bursts and pauses.
    busiest = max(
        sum(1 for t in times[i:] if t < start + 1.0)
        for i, start in enumerate(times)
        if start <= times[-1] - 1.0
    )
    print(f"\noverall {overall:.1f}/s, busiest second {busiest}, limit {RATE}/s")
    assert 0.9 * RATE <= overall <= 1.1 * RATE
    assert busiest <= 1.1 * RATE
    with steering.app_context(), db.transaction() as s:
        # claimed_by of a tried row: "t:<batch>:<host>:<pid>".
        senders = {tuple(c.split(":")[2:]) for c in s.scalars(select(Delivery.claimed_by))}
    assert len(senders) == 2, "both worker processes must have been sending"

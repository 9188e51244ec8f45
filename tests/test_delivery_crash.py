"""Crash safety: a real worker killed with SIGKILL again and again during a send.

Every reader ends with exactly one message, except the few whose SMTP transaction was cut
mid-way: those rows are `uncertain` (none of them got two copies, none was re-sent by
itself), and there are at most as many as a killed worker can have on the wire.
"""

from __future__ import annotations

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
CONCURRENCY = 2


@pytest.mark.slow
@pytest.mark.redis
def test_sigkill_during_a_send_loses_and_doubles_nobody(app, env, smtp, tmp_path):
    env = own_broker(
        env,
        tmp_path,
        MAILER_SEND_LEASE="3",
        MAILER_SEND_GROUP=str(GROUP),
        MAILER_SEND_BATCH="100",
        MAILER_SEND_WINDOW="6",
        MAILER_RATE_LIMIT="600",
    )
    steering = make_app(env)
    emails = add_readers(3000, names=False)
    with steering.app_context():
        issue_id = new_issue()
        with db.transaction() as s:  # the commit hands the batches to the workers
            deliveries.start_send(
                s, issue_id, settings=steering.extensions["mailer.settings"],
                render=make_renderer(size=6000),
            )

    kills = 0
    with Sweeper(steering):
        for _ in range(3):
            worker = WorkerProcess(
                env,
                tmp_path / "worker.log",
                args=["--pool", "prefork", "--concurrency", str(CONCURRENCY)],
            )
            worker.start()
            target = len(smtp.messages) + 500
            wait_until(
                lambda n=target: len(smtp.messages) >= n, 60, 0.01, what=f"{target} messages"
            )
            worker.kill()  # SIGKILL to the main process and its children, mid-transaction
            worker.stop()
            kills += 1
        assert len(smtp.messages) < len(emails), "the kills must land before the end"
        last = WorkerProcess(env, tmp_path / "worker.log").start()
        try:
            assert wait_finished(issue_id, 90) == "finished"
        finally:
            last.stop()

    got = per_recipient(smtp, emails)
    states = delivery_states(issue_id)
    uncertain = sorted(e for e, st in states.items() if st == "uncertain")
    print(
        f"\n{kills} kills; uncertain rows: {len(uncertain)}; of those delivered: "
        f"{sum(got[e] for e in uncertain)}"
    )
    assert set(states) == set(emails)
    assert set(states.values()) <= {"sent", "uncertain"}
    assert all(got[e] == 1 for e, st in states.items() if st == "sent")
    assert all(got[e] <= 1 for e in uncertain), "an uncertain row was sent twice"
    # Bounded by what the killed workers had on the wire: one group per process.
    assert len(uncertain) <= kills * CONCURRENCY * GROUP
    assert max(got.values()) == 1

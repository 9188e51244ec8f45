"""The tests' own servers are their own: a test session never talks to another's by mistake."""

from __future__ import annotations

import time

import pytest

from tests.helpers.servers import RedisServer


def test_a_redis_server_whose_port_is_taken_does_not_pass_for_started(tmp_path):
    # Parallel test processes each start a private redis-server on a port free_port() found
    # free a moment before (or that a restart gave up for a second): if another process's
    # server took it meanwhile, pinging the port answers, but not from ours.
    first = RedisServer(tmp_path / "first").start()
    try:
        second = RedisServer(tmp_path / "second", port=first.port)
        with pytest.raises(RuntimeError, match="taken"):
            second.start()
        assert second.proc.poll() is not None
        first.restart()  # the port is still its own after a restart
    finally:
        first.stop()


def test_a_send_still_running_when_the_next_test_starts_never_reaches_it(
    app, base_env, smtp, redis_server, worker, started_workers
):
    # The session's worker outlives each test. A test that returns once the first readers
    # have their mail leaves the rest of its send running: were the next test to start
    # meanwhile, the messages on the wire would land in that test's emptied SMTP sink (and
    # tests share addresses, so one of its readers would seem to have two).
    from mailer.db import db
    from mailer.services import deliveries
    from tests.helpers.app import start_clean
    from tests.helpers.delivery import add_readers, issue_status, make_renderer, new_issue
    from tests.helpers.servers import wait_until

    add_readers(10)  # one group: tried together, then on the wire one after the other
    smtp.delay = 0.3
    with app.app_context():
        issue_id = new_issue()
        with db.transaction() as s:  # the commit hands the batch to the worker
            deliveries.start_send(
                s, issue_id, settings=app.extensions["mailer.settings"], render=make_renderer()
            )
        wait_until(lambda: smtp.messages, 30, what="the first reader's mail")
        assert issue_status(issue_id) == "sending"  # the send runs on

        start_clean(base_env, smtp, redis_server, started_workers)  # the next test's start
        time.sleep(4)  # longer than the rest of the group takes
    assert smtp.messages == []
    assert worker.open_tasks() == set()


def test_a_task_held_for_its_countdown_is_gone_when_the_next_test_starts(
    app, base_env, smtp, redis_server, worker, started_workers
):
    # A task queued with a countdown (a retry, a later look) waits in the worker's memory,
    # where emptying the broker does not reach it. Ids start at 1 again in every test: when
    # its time came, it would act on the next test's rows.
    from datetime import timedelta

    from mailer.clock import utcnow
    from mailer.db import db
    from mailer.models import Article
    from mailer.services import digests
    from mailer.tasks.digest import send_test
    from tests.helpers.app import start_clean
    from tests.helpers.servers import wait_until

    with app.app_context():
        send_test.apply_async((1, "editor@daily.example"), countdown=3)
        wait_until(worker.open_tasks, 10, what="the worker to take the task")

        # The next test's start (told to wait less for the worker than tests do), then its
        # first issue: id 1 again.
        start_clean(base_env, smtp, redis_server, started_workers, settle_seconds=0.5)
        rt = app.extensions["mailer"]
        with db.transaction() as s:
            s.add(Article(title="The bridge opens", categories=[], summary="At last.",
                          url="https://daily.example/bridge", published_at=utcnow() - timedelta(hours=1)))
            s.flush()
            issue = digests.create_issue(s, rt.settings, rt.popularity, now=utcnow(),
                                         subject="The bridge")
            assert issue.id == 1
        time.sleep(5)  # past the countdown
    assert smtp.messages == []
    assert worker.open_tasks() == set()

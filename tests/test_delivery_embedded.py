"""The embedded way to run: `mailer run`'s threads worker, and the outbox when there is no SMTP."""

from __future__ import annotations

import email
import email.policy

from mailer.db import db
from mailer.mail.outbox import list_outbox
from mailer.services import deliveries
from tests.conftest import make_app
from tests.mail.delivery_support import (
    add_readers,
    make_renderer,
    new_issue,
    own_broker,
    per_recipient,
    wait_finished,
)
from tests.support import WorkerProcess

THREADS = ["--pool", "threads", "--concurrency", "4"]


def send(env, readers: int) -> tuple[list[str], int]:
    steering = make_app(env)
    emails = add_readers(readers)
    with steering.app_context():
        issue_id = new_issue()
        with db.transaction() as s:  # the commit hands the batches to the workers
            deliveries.start_send(
                s, issue_id, settings=steering.extensions["mailer.settings"],
                render=make_renderer(size=8000),
            )
    return emails, issue_id


def test_a_threads_worker_sends_each_reader_one_copy(app, env, smtp, tmp_path):
    env = own_broker(env, tmp_path, MAILER_SEND_BATCH="40")
    worker = WorkerProcess(env, tmp_path / "worker.log", args=THREADS).start()
    try:
        emails, issue_id = send(env, 200)
        assert wait_finished(issue_id, 60) == "finished", worker.log()
    finally:
        worker.stop()
    assert set(per_recipient(smtp, emails).values()) == {1}


def test_without_an_smtp_server_issues_land_in_the_outbox(app, env, tmp_path):
    env = own_broker(env, tmp_path)
    env.pop("MAILER_SMTP_URL")
    worker = WorkerProcess(env, tmp_path / "worker.log", args=THREADS).start()
    try:
        emails, issue_id = send(env, 30)
        assert wait_finished(issue_id, 60) == "finished", worker.log()
    finally:
        worker.stop()
    outbox = tmp_path / "own-broker" / "outbox"
    entries, total = list_outbox(outbox, limit=100)
    assert total == 30
    assert sorted(e.to.rsplit("<", 1)[-1].rstrip(">") for e in entries) == sorted(emails)
    for path in outbox.glob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.strict)
        assert msg["Subject"] == f"Issue {issue_id} for all"
        assert msg.get_body(("plain",)).get_content().startswith("Hello ")

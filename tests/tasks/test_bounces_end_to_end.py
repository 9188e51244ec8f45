"""End to end: an issue sent by the real worker to the test SMTP server; the reports built
against the messages it captured (with VERP, headers only, without VERP or our headers, a
complaint, an auto-reply) piped to the real `mailer bounces receive`; then the readers'
states, scores and histories and the issue's counts, as an operator would read them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mailer.db import db
from mailer.services import deliveries
from tests.helpers.app import make_app
from tests.helpers.bounces import arf, dsn, vacation
from tests.helpers.delivery import add_readers, make_renderer, new_issue, own_broker, wait_finished
from tests.helpers.servers import ROOT, WorkerProcess

BOUNCE_DOMAIN = "bounces.daily.example"


def receive(env: dict, message: bytes, recipient: str | None = None) -> str:
    args = ["--recipient", recipient] if recipient else []
    done = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bounces", "receive", *args],
        input=message, env=env, cwd=ROOT, capture_output=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


def mailer(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "mailer.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def without_our_headers(data: bytes) -> bytes:
    """The message as some MTAs return it: our token header and Message-ID lost."""
    head, _, body = data.partition(b"\r\n\r\n")
    head = re.sub(rb"\r\n(X-Delivery-Token|Message-ID|DKIM-Signature): [^\r]*(\r\n[ \t][^\r]*)*",
                  b"", b"\r\n" + head)[2:]
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
@pytest.mark.timeout(600)  # some fifteen `mailer` processes: over 300 s on a loaded machine
def test_reports_about_a_real_send_reach_the_right_readers(app, env, smtp, tmp_path):
    env = {**own_broker(env, tmp_path), "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN}
    sender = make_app(env)
    rt = sender.extensions["mailer"]
    emails = add_readers(6)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        with sender.app_context():
            issue_id = new_issue()
            with db.transaction() as s:
                deliveries.start_send(s, issue_id, settings=rt.settings, render=make_renderer())
            assert wait_finished(issue_id, 60) == "finished", worker.log()
    finally:
        worker.stop()
    sent = {m.recipient: m for m in smtp.messages if m.recipient in emails}
    assert set(sent) == set(emails)
    assert all(m.envelope_from.startswith("bounces+") and m.envelope_from.endswith(
        "@" + BOUNCE_DOMAIN) for m in sent.values())
    hard, soft, plain, complainer, away, untouched = emails

    # 1. A DSN to the VERP address, the MTA passing the envelope recipient.
    verp = sent[hard].envelope_from
    said = receive(env, dsn(sent[hard].data, hard, to=verp), verp)
    assert said.startswith("recorded: hard from pipe") and "(now bounced)" in said
    # 2. A temporary failure returning only the headers, to the From address (no VERP):
    #    our signed header names the delivery. Delivered twice by the MTA: counted once.
    report = dsn(sent[soft].data, soft, status="4.2.2", headers_only=True)
    assert receive(env, report).startswith("recorded: soft")
    assert receive(env, report).startswith("duplicate: soft")
    # 3. No VERP, no header of ours: the address, matched to a reader mailed recently.
    said = receive(env, dsn(without_our_headers(sent[plain].data), plain, status="5.2.1"))
    assert "(now bounced)" in said
    # 4. A feedback-loop complaint, recipient redacted, headers only (Yahoo's way).
    assert "(now complained)" in receive(env, arf(sent[complainer].data, None))
    # 5. An out-of-office answer.
    assert receive(env, vacation("news@daily.example", away)) == (
        "ignored: an auto-reply, not a delivery report")

    def show(email):
        return mailer(env, "subscribers", "show", email, "--json")

    assert [show(e)["status"] for e in emails] == [
        "bounced", "active", "bounced", "complained", "active", "active"]
    soft_story = show(soft)
    assert soft_story["bounce_score"] == 1 and soft_story["last_bounce"] is not None
    assert [(e["kind"], e["source"], e["issue"]) for e in soft_story["events"]] == [
        ("soft", "pipe", issue_id)]
    assert "4.2.2" in soft_story["events"][0]["detail"]
    assert [e["kind"] for e in show(hard)["events"]] == ["hard"]
    assert show(untouched)["events"] == []

    status = mailer(env, "digest", "status", str(issue_id), "--json")
    assert (status["bounced_hard"], status["bounced_soft"], status["complaints"]) == (2, 1, 1)
    assert status["complaints_rate"] == round(1 / 6, 6)

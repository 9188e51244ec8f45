"""Sending a real digest through the real worker: the CLI, the API, the reader's links."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Article, Role, Subscriber, SubscriberStatus
from mailer.services import digests, users
from tests.mail.delivery_support import add_readers, counts, issue_status, make_renderer, new_issue
from tests.support import wait_until


def compose(app) -> int:
    """Three fresh articles and an issue composed from them by the digest service."""
    rt = app.extensions["mailer"]
    now = utcnow()
    with db.transaction() as s:
        for k in range(3):
            s.add(
                Article(
                    title=f"Council votes on the bridge, part {k}",
                    categories=[],
                    url=f"https://daily.example/bridge-{k}",
                    summary="What was decided.",
                    published_at=now - timedelta(hours=k + 1),
                )
            )
        s.flush()
        issue = digests.create_issue(s, rt, now=now, subject="The bridge: {{ top_story }}")
        assert str(issue.status) == "draft"
        return issue.id


def test_cli_send_wait_delivers_the_digest_and_its_links_work(app, client, runner, smtp, worker):
    emails = add_readers(40)
    with app.app_context():
        issue_id = compose(app)
    result = runner.invoke(["digest", "send", str(issue_id), "--wait"])
    assert result.exit_code == 0, result.output
    assert f"Issue {issue_id} finished: 40 sent" in result.stdout
    assert f"Sending issue {issue_id} to 40 readers." in result.stderr

    for email in emails:
        (mail,) = smtp.to(email)
        assert "Council votes on the bridge" in mail.message["Subject"]
    mail = smtp.to(emails[0])[0]
    with app.app_context(), db.transaction() as s:
        reader = s.scalar(select(Subscriber).where(Subscriber.email == emails[0]))
    assert f"Hello {reader.name}," in mail.text
    click = next(u for u in mail.links() if "/t/" in u)
    resp = client.get("/" + click.split("/", 3)[3])
    assert resp.status_code == 302 and resp.headers["Location"].startswith(
        "https://daily.example/bridge-"
    )

    again = runner.invoke(["digest", "send", str(issue_id)])
    assert again.exit_code == 1
    assert f"issue {issue_id} is finished, it cannot be sent again" in again.stderr
    status = runner.invoke(["digest", "status", str(issue_id), "--json"])
    data = json.loads(status.stdout)
    assert data["status"] == "finished" and data["counts"]["sent"] == 40 and data["remaining"] == 0
    human = runner.invoke(["digest", "status", str(issue_id)])
    assert re.search(r"sent\s+40", human.stdout)
    assert len(smtp.messages) == 40


def test_cli_pause_resume_cancel_and_errors(app, runner, smtp):
    add_readers(5)
    with app.app_context():
        issue_id = new_issue()
        from mailer.services import after_commit, deliveries

        with db.transaction() as s:
            settings = app.extensions["mailer.settings"]
            deliveries.start_send(s, issue_id, settings=settings, render=make_renderer())
            # No worker gets the batches: the issue stays sending while we steer it.
            after_commit.take(s)
    assert runner.invoke(["digest", "pause", str(issue_id)]).exit_code == 0
    assert issue_status(issue_id) == "paused"
    second = runner.invoke(["digest", "pause", str(issue_id)])
    assert second.exit_code == 1 and "must be sending to become paused" in second.stderr
    assert runner.invoke(["digest", "resume", str(issue_id)]).exit_code == 0
    assert issue_status(issue_id) == "sending"
    refused = runner.invoke(["digest", "cancel", str(issue_id)], input="n\n")
    assert refused.exit_code == 1 and issue_status(issue_id) == "sending"
    assert runner.invoke(["digest", "cancel", str(issue_id), "--yes"]).exit_code == 0
    assert issue_status(issue_id) == "cancelled"
    missing = runner.invoke(["digest", "status", "999999"])
    assert missing.exit_code == 1 and "There is no issue 999999." in missing.stderr
    none = runner.invoke(["digest", "uncertain", str(issue_id)])
    assert f"Issue {issue_id} has no uncertain deliveries." in none.stdout
    assert smtp.messages == []


def test_api_sends_and_steers_an_issue(app, client, smtp, worker):
    emails = add_readers(30)
    with app.app_context():
        with db.transaction() as s:
            editor = users.create_user(s, "editor@daily.example", "a long password 1", Role.EDITOR)
            token = users.create_api_token(s, editor, "test")
        issue_id = compose(app)
    auth = {"Authorization": f"Bearer {token}"}

    assert client.post(f"/api/v1/issues/{issue_id}/send").status_code == 401
    resp = client.post(f"/api/v1/issues/{issue_id}/send", headers=auth)
    assert resp.status_code == 202, resp.json
    assert resp.json["total"] == 30 and resp.json["status"] in ("sending", "finished")
    wait_until(lambda: issue_status(issue_id) == "finished", 30, what="the issue to finish")
    status = client.get(f"/api/v1/issues/{issue_id}/status", headers=auth).json
    assert status["counts"]["sent"] == 30 and status["remaining"] == 0
    assert sorted(m.recipient for m in smtp.messages) == sorted(emails)

    twice = client.post(f"/api/v1/issues/{issue_id}/send", headers=auth)
    assert twice.status_code == 409 and "must be draft, scheduled" in twice.json["message"]
    paused = client.post(f"/api/v1/issues/{issue_id}/pause", headers=auth)
    assert paused.status_code == 409
    assert client.get("/api/v1/issues/424242/status", headers=auth).status_code == 404

    with app.app_context():
        other = new_issue()
    cancelled = client.post(f"/api/v1/issues/{other}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert client.post(f"/api/v1/issues/{other}/send", headers=auth).status_code == 409
    assert counts(other)["pending"] == 0 and len(smtp.messages) == 30
    with app.app_context(), db.transaction() as s:
        assert {str(v) for v in s.scalars(select(Subscriber.status))} == {SubscriberStatus.ACTIVE}


def test_dkim_record_prints_what_to_publish(app, env, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.conftest import MailerRunner, make_app

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    signed = make_app(
        env,
        MAILER_DKIM_KEY_FILE=str(path),
        MAILER_DKIM_SELECTOR="news2026",
        MAILER_DKIM_DOMAIN="daily.example",
    )
    out = MailerRunner(signed).invoke(["dkim-record"])
    assert out.exit_code == 0
    assert out.stdout.startswith('news2026._domainkey.daily.example. IN TXT "v=DKIM1; k=rsa; p=')
    none = MailerRunner(app).invoke(["dkim-record"])
    assert none.exit_code == 1 and "no DKIM key is configured" in none.stderr

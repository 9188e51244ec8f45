"""Fills a database the way the previous release (v0.1.0) did, with that release's own code.

Run by tests/test_upgrade_from_release.py as `python release_seed.py OUT.json` with the
release's source tree first on PYTHONPATH and MAILER_* naming an empty database. Only the
release's public surfaces are used: its CLI, its HTTP routes (through its own Flask test
client), its services where a person would click, and a real `mailer worker` process of
the release sending to an SMTP server started here. Writes what the upgraded code must
still honour: row counts, the archive page of every sent issue and links from mail already
sent (unsubscribe, preferences, a tracked click, a confirmation). Where the release knows
complaints (after v0.1.0), a reader complains through the bounce pipe.

This file must keep working against every release the test names (v0.1.0's code and the
last one before newsletters), not against the current code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiosmtpd.controller import Controller

LIVENESS = {"worker_heartbeats", "housekeeping_turns"}

PASSWORD = "correct horse battery staple"


class Sink:
    """An SMTP server that keeps every message; once `refuse` is set, it refuses addresses
    starting with 'gone' (the mailbox was closed after its owner confirmed)."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.refuse = False

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse and address.startswith("gone"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.messages.append((rcpt, bytes(envelope.content)))
        return "250 Message accepted"

    def raw_to(self, rcpt: str, subject_has: str) -> bytes:
        import email
        import email.policy

        with self.lock:
            found = list(self.messages)
        for to, data in found:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            if to == rcpt and subject_has in str(msg["Subject"]):
                return data
        raise AssertionError(f"no message to {rcpt} about {subject_has!r}")

    def text_to(self, rcpt: str, subject_has: str) -> str:
        import email
        import email.policy

        with self.lock:
            found = list(self.messages)
        for to, data in found:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            if to == rcpt and subject_has in str(msg["Subject"]):
                return msg.get_body(("plain",)).get_content()
        raise AssertionError(f"no message to {rcpt} about {subject_has!r}")


def wait(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return value


def main(out: Path) -> None:
    sink = Sink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    os.environ["MAILER_SMTP_URL"] = f"smtp://127.0.0.1:{port}"

    from click.testing import CliRunner

    import mailer.cli.commands  # noqa: F401 - registers the subcommands
    from mailer import create_app
    from mailer.cli import Context, cli
    from mailer.config import load_settings
    from mailer.db import db
    from mailer.migrate import upgrade
    from mailer.services import deliveries, subscriptions

    upgrade(load_settings().database_url)
    app = create_app()
    rt = app.extensions["mailer"]
    context = Context()
    context._app = app

    def mailer(*args, input=None) -> str:
        result = CliRunner().invoke(cli, list(args), obj=context, input=input)
        if result.exit_code != 0:
            raise AssertionError(f"mailer {' '.join(args)}: {result.output}")
        return result.output.strip().splitlines()[-1] if result.output.strip() else ""

    log = Path(tempfile.mkdtemp()) / "worker.log"
    embedded = not os.environ.get("MAILER_REDIS_URL")
    pool = ["--pool", "threads", "--concurrency", "2"] if embedded else [
        "--pool", "prefork", "--concurrency", "1"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailer.cli", "worker", "--loglevel", "INFO", *pool],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait(lambda: b" ready." in log.read_bytes(), "the release's worker")
        summary = seed(app, rt, db, mailer, sink, deliveries, subscriptions)
    except BaseException:
        sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        worker.terminate()
        worker.wait(30)
        controller.stop()
    out.write_text(json.dumps(summary, indent=1))


def seed(app, rt, db, mailer, sink, deliveries, subscriptions) -> dict:
    from sqlalchemy import func, select, text

    from mailer.db import Base
    from mailer.models import Subscriber

    client = app.test_client()
    domain = "daily.example"

    # People of the console.
    mailer("user", "add", f"admin@{domain}", "--role", "admin", "--password-stdin",
           input=PASSWORD + "\n")
    mailer("user", "add", f"editor@{domain}", "--role", "editor", "--password-stdin",
           input=PASSWORD + "\n")
    token = mailer("user", "token", f"editor@{domain}", "--name", "cms")
    bearer = {"Authorization": f"Bearer {token}"}

    # Articles pushed by the CMS, published within the last day.
    now = datetime.now(UTC)
    articles = [
        {
            "url": f"https://www.{domain}/2026/story-{n}",
            "title": f"Story number {n}",
            "summary": f"What happened in story {n}.",
            "categories": ["News"],
            "published": (now - timedelta(hours=n + 1)).isoformat(),
        }
        for n in range(6)
    ]
    answer = client.post("/api/v1/articles", json=articles, headers=bearer)
    assert answer.status_code == 201, answer.get_data(as_text=True)

    # Readers through the public API: they get a confirmation mail from the worker.
    def signup(email, **extra):
        answer = client.post("/api/v1/subscribe", json={"email": email, **extra})
        assert answer.status_code == 202, answer.get_data(as_text=True)

    for n in range(8):
        signup(f"reader{n}@example.com", name=f"Reader {n}")
    signup("pending@example.com", name="Still Pending")
    signup("gone@example.com")
    signup("leaver@example.com")
    signup("erased@example.com")
    for email in [f"reader{n}@example.com" for n in range(8)] + [
        "gone@example.com", "leaver@example.com", "erased@example.com"
    ]:
        body = wait(lambda e=email: _try(sink.text_to, e, "confirm"), f"confirmation to {email}")
        url = re.search(r"https?://\S+/confirm/\S+", body).group(0)
        path = url.split("://", 1)[1].split("/", 1)[1]
        page = client.get("/" + path)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
        assert client.post("/" + path, data={"csrf_token": csrf.group(1)}).status_code == 200
    pending_text = wait(lambda: _try(sink.text_to, "pending@example.com", "confirm"),
                        "the pending reader's confirmation")
    confirm_link = re.search(r"https?://\S+/confirm/\S+", pending_text).group(0)

    # Imported readers, already consented elsewhere.
    csv = Path(tempfile.mkdtemp()) / "readers.csv"
    csv.write_text("email,name,frequency\n" + "".join(
        f"imported{n}@example.com,Imported {n},weekly\n" for n in range(5)))
    mailer("subscribers", "import", str(csv), "--source", "The old list, 2025")

    sink.refuse = True
    # A draft, and an issue sent by the release's worker (one address refused with 550).
    draft = int(mailer("digest", "create", "--subject", "A draft nobody sent"))
    sent = int(mailer("digest", "create", "--subject", "Morning: {{ top_story }}"))
    mailer("digest", "send", str(sent))
    with app.app_context():
        wait(lambda: _status(db, deliveries, sent) == "finished", "the issue to finish")

    # Someone reports the digest as spam through their mailbox's feedback loop, where the
    # release reads complaints (`mailer bounces receive`, the MTA's pipe).
    complaints = importlib.util.find_spec("mailer.cli.bounces") is not None
    if complaints:
        mailer("bounces", "receive",
               input=feedback_report(sink.raw_to("reader2@example.com", "Morning"),
                                     "reader2@example.com"))

    # Someone leaves by the one-click link of the mail they got; someone erases their data.
    digest_text = sink.text_to("reader1@example.com", "Morning")
    unsubscribe = re.search(r"https?://\S+/unsubscribe/\S+", sink.text_to(
        "leaver@example.com", "Morning")).group(0)
    path = "/" + unsubscribe.split("://", 1)[1].split("/", 1)[1]
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with app.app_context(), db.transaction() as s:
        subscriptions.erase(s, subscriptions.by_email(s, "erased@example.com"), rt.email_hash)

    # A click on the mail's first tracked link.
    click = re.search(r"https?://\S+/t/\S+", digest_text).group(0)
    assert client.get("/" + click.split("://", 1)[1].split("/", 1)[1]).status_code == 302

    # A weekly schedule, fired by hand.
    mailer("schedule", "add", "--name", "Weekly digest", "--cron", "mon 07:00", "--tz",
           "Europe/Berlin")
    scheduled = int(mailer("schedule", "run-now", "1"))
    with app.app_context():
        wait(lambda: _status(db, deliveries, scheduled) in ("finished", "skipped"),
             "the scheduled issue")

    archive = client.get(f"/archive/{sent}")
    assert archive.status_code == 200
    with app.app_context(), db.engine.connect() as conn:
        # Every table of the readers' and editors' data. The workers' liveness rows
        # (heartbeats, housekeeping turns) are not data: the release's worker, still running
        # here, may forget a lapsed heartbeat at its next tick.
        counts = {
            t.name: conn.scalar(select(func.count()).select_from(t))
            for t in Base.metadata.sorted_tables
            if t.name not in LIVENESS
        }
        readers = dict(conn.execute(text("SELECT email, status FROM subscribers")).all())
        issues = dict(conn.execute(text("SELECT id, status FROM issues")).all())
        revision = conn.scalar(text("SELECT version_num FROM alembic_version"))
        assert conn.scalar(select(func.count()).select_from(Subscriber.__table__).where(
            Subscriber.status == "bounced")) == 1
    return {
        "complaints": complaints,
        "revision": revision,
        "counts": counts,
        "readers": readers,
        "issues": {str(k): v for k, v in issues.items()},
        "draft": draft,
        "sent": sent,
        "archive_html": archive.get_data(as_text=True),
        # Every finished issue's archive page (the scheduled one too, when it was not skipped).
        "archives": {str(i): client.get(f"/archive/{i}").get_data(as_text=True)
                     for i, status in issues.items() if status == "finished"},
        "links": {
            "unsubscribe": re.search(r"https?://\S+/unsubscribe/\S+", digest_text).group(0),
            "preferences": re.search(r"https?://\S+/preferences/\S+", digest_text).group(0),
            "click": click,
            "confirm": confirm_link,
            # What a mailbox provider's unsubscribe button POSTs to (RFC 8058), from another
            # reader's copy.
            "one_click": _list_unsubscribe(sink.raw_to("reader3@example.com", "Morning")),
        },
        "articles": [a["url"] for a in articles],
    }


def feedback_report(original: bytes, recipient: str) -> bytes:
    """A mailbox provider's complaint about `original` (RFC 5965), as its feedback loop sends
    it to the bounce address."""
    boundary = "arf-boundary-1"
    return (
        "From: Feedback Loop <feedback@mailbox.example>\n"
        "To: news@daily.example\nSubject: FW: Complaint\nMIME-Version: 1.0\n"
        "Message-ID: <complaint-1@mailbox.example>\n"
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"'
        "\n\n"
        f"--{boundary}\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        f"--{boundary}\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nUser-Agent: Mailbox-Feedback/1.0\nVersion: 1\n"
        f"Original-Rcpt-To: {recipient}\n"
        f"\n--{boundary}\nContent-Type: message/rfc822\n\n"
        + original.replace(b"\r\n", b"\n").decode()
        + f"\n--{boundary}--\n"
    ).encode()


def _list_unsubscribe(raw: bytes) -> str:
    import email
    import email.policy

    header = str(email.message_from_bytes(raw, policy=email.policy.default)["List-Unsubscribe"])
    return re.search(r"<(https?://[^>]+)>", header).group(1)


def _try(fn, *args):
    try:
        return fn(*args)
    except AssertionError:
        return None


def _status(db, deliveries, issue_id: int) -> str:
    with db.transaction() as s:
        return deliveries.status(s, issue_id)["status"]


if __name__ == "__main__":
    main(Path(sys.argv[1]))

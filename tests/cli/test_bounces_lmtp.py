"""`mailer bounces lmtp` as an MTA delivers to it: a real process, answering each recipient
with the words `mailer bounces receive` prints, and 451 when the database cannot take it."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest
from sqlalchemy import select

from mailer.db import db
from mailer.models import BounceEvent, BounceReportCount, Subscriber, SubscriberStatus
from tests.helpers.bounces import LmtpReceiver, crlf, dsn, returned, sending_issue, verp
from tests.helpers.servers import ROOT, free_port, wait_until

BOUNCE_DOMAIN = "bounces.daily.example"


@pytest.fixture
def lmtp_env(env) -> dict:
    return {**env, "MAILER_BOUNCE_DOMAIN": BOUNCE_DOMAIN, "MAILER_BOUNCE_MAX_BYTES": "200000"}


@pytest.fixture
def receiver(lmtp_env, tmp_path):
    server = LmtpReceiver(lmtp_env, tmp_path / "lmtp.log").start()
    yield server
    assert server.stop() == 0, server.output()[-3000:]
    assert "Traceback" not in server.output()


def pipe(env: dict, message: bytes, recipient: str | None = None) -> list[str]:
    args = ["--recipient", recipient] if recipient else []
    done = subprocess.run([sys.executable, "-m", "mailer.cli", "bounces", "receive", *args],
                          input=message, env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().splitlines()


def verp_of(app, delivery_id: int) -> str:
    return verp(app.extensions["mailer"].tokens, delivery_id, BOUNCE_DOMAIN)


def counted(source: str) -> dict[str, int]:
    with db.transaction() as s:
        return dict(s.execute(select(BounceReportCount.result, BounceReportCount.n)
                              .where(BounceReportCount.source == source)).all())


def test_a_report_is_recorded_once_whichever_way_it_came(app, lmtp_env, receiver):
    tokens = app.extensions["mailer"].tokens
    issue_id, (first, second), (email, other) = sending_issue(2)
    with db.transaction() as s:
        ids = dict(s.execute(select(Subscriber.email, Subscriber.id)).all())
    # The report names a stranger and carries nothing of ours: only the envelope recipient,
    # the VERP address the MTA delivered it to, says who it is about.
    message = dsn(returned(tokens, first, "someone@example.org", ours=False),
                  "someone@example.org")
    assert receiver.deliver(message, verp_of(app, first)) == [(250, (
        f"2.0.0 recorded: hard from lmtp about reader {ids[email]}, issue {issue_id} "
        "(now bounced)"))]
    again = (250, f"2.0.0 duplicate: hard report about reader {ids[email]}, issue {issue_id}, "
                  "recorded before")
    assert receiver.deliver(message, verp_of(app, first)) == [again]
    assert pipe(lmtp_env, message, verp_of(app, first)) == [again[1].removeprefix("2.0.0 ")]

    # One message for two recipients: a reply each, in their order; the envelope
    # recipient comes first, and a forged one names nobody.
    soft = dsn(returned(tokens, second, other), other, status="4.2.2")
    forged = f"bounces+{'x' * 40}@{BOUNCE_DOMAIN}"
    assert receiver.deliver(soft, verp_of(app, second), forged) == [
        (250, f"2.0.0 recorded: soft from lmtp about reader {ids[other]}, issue {issue_id}"),
        (250, "2.0.0 ignored: forged or unknown bounce token"),
    ]
    with db.transaction() as s:
        events = s.execute(select(BounceEvent.kind, BounceEvent.source, BounceEvent.subscriber_id)
                           .order_by(BounceEvent.id)).all()
        states = dict(s.execute(select(Subscriber.email, Subscriber.status)).all())
    assert [(str(k), src, sub) for k, src, sub in events] == [
        ("hard", "lmtp", ids[email]), ("soft", "lmtp", ids[other])]
    assert (states[email], states[other]) == (SubscriberStatus.BOUNCED, SubscriberStatus.ACTIVE)
    assert counted("lmtp") == {"recorded": 2, "duplicate": 1, "ignored": 1}
    assert counted("pipe") == {"duplicate": 1}
    assert "recorded: hard from lmtp about reader" in receiver.output()  # and in the log


BAD = {
    "empty": b"",
    "binary junk": bytes(range(256)) * 20 + b"\r\n",
    "broken MIME": (b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
                    b"MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary=\"b\r\n\r\n"
                    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nAction: failed\r\n"),
    "over the limit": b"Subject: Undelivered Mail\r\n\r\n" + (b"x" * 998 + b"\r\n") * 300,
    "one endless line": b"Subject: Undelivered Mail\r\n\r\n" + b"y" * 300_000 + b"\r\n",
}


def test_bad_input_is_answered_with_the_pipes_words(app, lmtp_env, receiver):
    for what, message in BAD.items():
        replies = receiver.deliver(message, f"bounces+nobody@{BOUNCE_DOMAIN}")
        said = pipe(lmtp_env, message, f"bounces+nobody@{BOUNCE_DOMAIN}")
        assert replies == [(250, "\n".join(f"2.0.0 {line}" for line in said))], what
        assert said[0].startswith("ignored: "), what
    assert receiver.deliver(BAD["over the limit"], "a@x")[0][1] == (
        "2.0.0 ignored: larger than 200000 bytes")
    # Not LMTP: refused, and the server goes on.
    client = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    client.recv(1000)
    client.sendall(b"HELO mx.daily.example\r\n")
    assert client.recv(1000).startswith(b"500 ")
    client.close()
    assert receiver.deliver(BAD["empty"], "a@x") == [(250, "2.0.0 ignored: an empty message")]
    with db.transaction() as s:
        assert s.scalar(select(BounceEvent.id)) is None
    assert counted("lmtp") == {"ignored": len(BAD) + 2}


def test_a_stop_finishes_the_message_in_hand_on_a_unix_socket(app, lmtp_env, tmp_path):
    tokens = app.extensions["mailer"].tokens
    _, (did,), (email,) = sending_issue(1)
    path = tmp_path / "bounces.sock"
    server = LmtpReceiver(lmtp_env, tmp_path / "lmtp.log", socket_path=path).start()
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    conversation = socket.socket(socket.AF_UNIX)
    conversation.connect(str(path))
    lines = conversation.makefile("rb")
    assert lines.readline().startswith(b"220 ")
    for command in (b"LHLO mx.daily.example", b"MAIL FROM:<>", f"RCPT TO:<{verp_of(app, did)}>"
                    .encode(), b"DATA"):
        conversation.sendall(command + b"\r\n")
        while (line := lines.readline())[3:4] == b"-":
            pass
        assert line[:1] in (b"2", b"3"), (command, line)
    message = crlf(dsn(returned(tokens, did, email), email))
    conversation.sendall(message[:500])  # the MTA is halfway through DATA ...
    os.killpg(server.proc.pid, signal.SIGTERM)  # ... when the server is told to stop
    wait_until(lambda: not path.exists(), what="the socket removed: no new connections")
    assert server.proc.poll() is None  # still finishing the message in hand
    conversation.sendall(message[500:] + b".\r\n")
    assert lines.readline().startswith(b"250 2.0.0 recorded: hard from lmtp about reader ")
    assert server.proc.wait(30) == 0
    conversation.close()
    output = server.stop() == 0 and server.output()
    assert output and output.rstrip().endswith("stopped") and "Traceback" not in output
    with db.transaction() as s:
        assert s.scalar(select(Subscriber.status).where(Subscriber.email == email)) == (
            SubscriberStatus.BOUNCED)


class TcpProxy:
    """A TCP forwarder the test can switch off and on: the database going away and back."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self.listener: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def start(self) -> TcpProxy:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a, b):
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()

    def stop(self):
        """Every connection cut and nobody listening: what a database restart looks like."""
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets = []


@pytest.mark.redis  # the production stack: a PostgreSQL server that goes away and comes back
def test_a_database_outage_is_answered_451_and_recovered_from(app, lmtp_env, tmp_path):
    from sqlalchemy.engine import make_url

    tokens = app.extensions["mailer"].tokens
    _, dids, emails = sending_issue(3)
    url = make_url(lmtp_env["MAILER_DATABASE_URL"])
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    server = LmtpReceiver({**lmtp_env, "MAILER_DATABASE_URL": proxied},
                          tmp_path / "lmtp.log").start()
    try:
        messages = [dsn(returned(tokens, d, e), e) for d, e in zip(dids, emails, strict=True)]
        assert server.deliver(messages[0], "a@x")[0][1].startswith("2.0.0 recorded: hard")
        proxy.stop()
        for message in messages[1:]:  # a pooled connection cut, then no server at all
            assert server.deliver(message, "a@x") == [(451, (
                "4.3.0 not recorded, try again later: the database is unreachable or busy "
                "(OperationalError)"))]
        proxy.start()
        for message in messages[1:]:  # the MTA delivers them again
            assert server.deliver(message, "a@x")[0][1].startswith("2.0.0 recorded: hard")
    finally:
        assert server.stop() == 0
        proxy.stop()
    assert "Traceback" not in server.output()
    with db.transaction() as s:
        assert set(s.scalars(select(Subscriber.status))) == {SubscriberStatus.BOUNCED}
        assert len(s.scalars(select(BounceEvent.id)).all()) == 3

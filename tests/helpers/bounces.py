"""Reports as mail systems write them, built against a message we sent: DSNs (RFC 3464),
feedback reports (ARF, RFC 5965), headers-only returns and auto-replies."""

from __future__ import annotations

import os
import secrets
import signal
import smtplib
import threading
import time
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import insert, select, update

from mailer.bounces import Kind, Report, Source
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber
from mailer.tokens import BOUNCE
from tests.helpers.delivery import add_readers, new_issue
from tests.helpers.servers import free_port, start_mailer, wait_until


def _head(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n")


def _envelope(to: str, subject: str, boundary: str, report_type: str, sender: str) -> str:
    return (
        f"Return-Path: <>\n"
        f"Delivered-To: {to}\n"
        f"From: {sender}\n"
        f"To: {to}\n"
        f"Subject: {subject}\n"
        f"Date: {format_datetime(utcnow())}\n"
        f"Message-ID: <{secrets.token_hex(8)}@mx.example.net>\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="{boundary}"\n\n'
    )


def dsn(
    original: bytes,
    recipients: list[str] | str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    to: str = "news@daily.example",
    headers_only: bool = False,
    diagnostic: str | None = None,
) -> bytes:
    """A Postfix-style DSN returning `original` (or only its headers) for the recipients."""
    if isinstance(recipients, str):
        recipients = [recipients]
    boundary = "dsn-" + secrets.token_hex(6)
    code = "550" if status.startswith("5") else "452"
    blocks = "".join(
        f"\nFinal-Recipient: rfc822; {r}\nOriginal-Recipient: rfc822;{r}\nAction: {action}\n"
        f"Status: {status}\nRemote-MTA: dns; mx.example.org\n"
        f"Diagnostic-Code: smtp; {diagnostic or f'{code} {status} <{r}>: Recipient address rejected'}\n"
        for r in recipients
    )
    returned = (
        "Content-Type: text/rfc822-headers\n\n" + _head(original).decode()
        if headers_only
        else "Content-Type: message/rfc822\n\n" + original.replace(b"\r\n", b"\n").decode()
    )
    body = (
        _envelope(to, "Undelivered Mail Returned to Sender", boundary, "delivery-status",
                  "MAILER-DAEMON@mx.example.net (Mail Delivery System)")
        + f"--{boundary}\nContent-Type: text/plain\n\nThe message could not be delivered.\n\n"
        + f"--{boundary}\nContent-Type: message/delivery-status\n\n"
        + "Reporting-MTA: dns; mx.example.net\nArrival-Date: "
        + format_datetime(utcnow()) + "\n"
        + blocks
        + f"\n--{boundary}\n{returned}\n--{boundary}--\n"
    )
    return body.encode()


def arf(original: bytes, recipient: str | None, *, to: str = "news@daily.example",
        feedback_type: str = "abuse", headers_only: bool = True) -> bytes:
    """A feedback-loop complaint (Yahoo returns only the headers; recipient may be redacted)."""
    boundary = "arf-" + secrets.token_hex(6)
    rcpt = f"Original-Rcpt-To: {recipient}\n" if recipient else ""
    returned = (
        "Content-Type: text/rfc822-headers\n\n" + _head(original).decode()
        if headers_only
        else "Content-Type: message/rfc822\n\n" + original.replace(b"\r\n", b"\n").decode()
    )
    return (
        _envelope(to, "FW: Complaint", boundary, "feedback-report",
                  "Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>")
        + f"--{boundary}\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n"
        + f"--{boundary}\nContent-Type: message/feedback-report\n\n"
        + f"Feedback-Type: {feedback_type}\nUser-Agent: Yahoo!-Mail-Feedback/2.0\nVersion: 1\n"
        + rcpt
        + f"Arrival-Date: {format_datetime(utcnow())}\n"
        + f"\n--{boundary}\n{returned}\n--{boundary}--\n"
    ).encode()


def vacation(to: str, sender: str) -> bytes:
    """An out-of-office answer (Auto-Submitted, like a DSN, but not one)."""
    return (
        f"From: {sender}\nTo: {to}\nSubject: Out of office: back on Monday\n"
        f"Auto-Submitted: auto-replied\nMessage-ID: <{secrets.token_hex(8)}@example.org>\n"
        f"Date: {format_datetime(utcnow())}\n\nI am away until Monday.\n"
    ).encode()


def sending_issue(readers: int) -> tuple[int, list[int], list[str]]:
    """An issue still sending whose `readers` messages all went out: (id, deliveries, emails)."""
    emails = add_readers(readers)
    issue_id = new_issue()
    with db.transaction() as s:
        s.execute(update(Issue).where(Issue.id == issue_id)
                  .values(status=IssueStatus.SENDING, started_at=utcnow()))
        ids = dict(s.execute(select(Subscriber.email, Subscriber.id)
                             .where(Subscriber.email.in_(emails))).all())
        rows = [{"issue_id": issue_id, "subscriber_id": ids[e], "status": DeliveryStatus.SENT,
                 "attempts": 1, "sent_at": utcnow()} for e in emails]
        s.execute(insert(Delivery), rows)
        dids = list(s.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id)
                              .order_by(Delivery.id)))
    return issue_id, dids, emails


def report(kind: Kind, delivery_id: int, key: str | None = None) -> Report:
    return Report(source=Source.PIPE, kind=kind, key=key or f"{kind}-{delivery_id}",
                  delivery_id=delivery_id, status="5.1.1" if kind == Kind.HARD else None,
                  diagnostic="550 5.1.1 no such user" if kind == Kind.HARD else None)


def returned(tokens, delivery_id: int, email: str, *, ours: bool = True) -> bytes:
    """The head of the message we sent for `delivery_id`, as a report returns it; with our
    signed delivery token unless `ours` is False (then only the address names the reader)."""
    token = f"X-Delivery-Token: {tokens.sign(BOUNCE, str(delivery_id))}\r\n" if ours else ""
    return (f"From: The Daily <news@daily.example>\r\nTo: <{email}>\r\nSubject: Today\r\n"
            f"{token}\r\nHi\r\n").encode()


def verp(tokens, delivery_id: int, domain: str) -> str:
    """The envelope sender we gave the delivery's message: where its bounces come back to."""
    return f"bounces+{tokens.sign(BOUNCE, str(delivery_id))}@{domain}"


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class LmtpReceiver:
    """`mailer bounces lmtp` as an MTA meets it: a real process, on a free port or a unix
    socket, with its output in a log file."""

    def __init__(self, env: dict, log_path: Path, *, socket_path: Path | None = None,
                 threads: int = 4):
        self.env, self.log_path, self.socket_path = env, log_path, socket_path
        self.port = free_port()
        where = ["--socket", str(socket_path)] if socket_path else [
            "--listen", f"127.0.0.1:{self.port}"]
        self.args = ["bounces", "lmtp", *where, "--threads", str(threads)]
        self.proc = self.log = None

    def start(self) -> LmtpReceiver:
        if self.log is not None:
            self.log.close()
        self.proc, self.log = start_mailer(self.args, self.env, self.log_path)
        wait_until(self._ready, timeout=30, what="mailer bounces lmtp listening")
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            self.connect().quit()
        except OSError:
            return False
        return True

    def connect(self) -> smtplib.LMTP:
        client = (smtplib.LMTP(str(self.socket_path), timeout=30) if self.socket_path
                  else smtplib.LMTP("127.0.0.1", self.port, timeout=30))
        client.ehlo("mx.daily.example")  # smtplib's LMTP says LHLO
        return client

    def deliver(self, message: bytes, *recipients: str) -> list[tuple[int, str]]:
        """One message, as an MTA delivers it (lines end in CRLF on the wire): one reply per
        recipient."""
        message = crlf(message)
        client = self.connect()
        try:
            client.mail("<>")
            for recipient in recipients:
                client.rcpt(recipient)
            replies = [client.data(message)]
            replies += [client.getreply() for _ in recipients[1:]]
        finally:
            client.close()
        return [(code, text.decode()) for code, text in replies]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def stop(self) -> int:
        """SIGTERM, as systemd and Ctrl+C stop it: its exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Mta:
    """What an MTA does with a queue of messages for the LMTP server: several connections,
    each message kept and delivered again until it gets a 250 (a 451, a dropped connection
    or no answer at all mean: again, later)."""

    def __init__(self, receiver, items, order):
        self.receiver, self.items = receiver, items
        self.queue = list(reversed(order))  # indexes into items; popped from the end
        self.lock = threading.Lock()
        self.answers: list[list[str]] = [[] for _ in items]  # each report's 250s, in words
        self.answered = 0
        self.again = {"451": 0, "dropped": 0}

    def run(self, connections: int) -> None:
        threads = [threading.Thread(target=self._connection) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _next(self):
        with self.lock:
            return self.queue.pop() if self.queue else None

    def _connection(self) -> None:
        client = None
        while (i := self._next()) is not None:
            message, recipient = self.items[i]
            deadline = time.monotonic() + 60
            while True:
                assert time.monotonic() < deadline, f"message {i} never taken"
                try:
                    client = client or self.receiver.connect()
                    client.mail("<>")
                    client.rcpt(recipient)
                    code, text = client.data(message)
                except (OSError, smtplib.SMTPException):
                    code, text = None, b""
                if code == 250:
                    break
                with self.lock:
                    self.again["451" if code == 451 else "dropped"] += 1
                if client is not None:
                    client.close()
                    client = None
                time.sleep(0.05)
            with self.lock:
                self.answers[i].append(text.decode().split()[1].rstrip(":"))
                self.answered += 1
        if client is not None:
            client.quit()

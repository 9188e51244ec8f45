"""Reports as mail systems write them, built against a message we sent: DSNs (RFC 3464),
feedback reports (ARF, RFC 5965), headers-only returns and auto-replies."""

from __future__ import annotations

import secrets
from email.utils import format_datetime

from sqlalchemy import insert, select, update

from mailer.bounces import Kind, Report, Source
from mailer.clock import utcnow
from mailer.db import db
from mailer.models import Delivery, DeliveryStatus, Issue, IssueStatus, Subscriber
from tests.helpers.delivery import add_readers, new_issue


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

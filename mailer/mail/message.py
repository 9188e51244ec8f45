"""Building RFC 5322 messages: multipart/alternative, text first, quoted-printable, CRLF."""

from __future__ import annotations

import email.policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from mailer.clock import utcnow

# SMTP policy: CRLF line endings, lines folded under 78 characters, and header values
# containing CR or LF are refused rather than sent.
POLICY = email.policy.SMTP


def build_message(
    *,
    sender: Address,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> bytes:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id or make_msgid(domain=sender.domain or "localhost")
    for name, value in (headers or {}).items():
        msg[name] = value
    # Quoted-printable keeps every line under 76 characters and the message 7-bit clean.
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
        for part in msg.iter_parts():
            del part["MIME-Version"]  # belongs to the top level only
    return msg.as_bytes(policy=POLICY)

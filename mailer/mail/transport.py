"""Transports: SMTP for real delivery, an outbox folder of .eml files for the embedded mode.

Both send one message (`send`, for confirmations and other single mails) or a batch whose
messages are already in wire form (`send_many`, for digests: one outcome per message, see
mail.smtp for what each outcome means).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from mailer.clock import utcnow
from mailer.config import Settings, SmtpSettings
from mailer.mail.notices import Outgoing
from mailer.mail.smtp import NotAttempted, SmtpClient, Uncertain, classify, to_wire

__all__ = [
    "NotAttempted",
    "OutboxTransport",
    "SmtpTransport",
    "Transport",
    "Uncertain",
    "classify",
    "transport_from_settings",
]


class Transport(Protocol):
    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        """Deliver one message or raise TemporaryFailure / PermanentFailure."""

    def send_many(self, messages: Sequence[Outgoing]) -> list[Exception | None]:
        """Deliver wire-form messages; None or the failure, per message, in order."""

    def close(self) -> None: ...


class SmtpTransport:
    """One persistent SMTP connection per process, opened lazily and re-opened after a drop."""

    def __init__(self, cfg: SmtpSettings, ssl_context=None):
        self.cfg = cfg
        self.client = SmtpClient(cfg, ssl_context=ssl_context)
        # A threads worker shares one transport between tasks: one conversation at a time.
        self._lock = threading.Lock()

    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        (outcome,) = self.send_many([Outgoing(envelope_from, recipient, to_wire(data))])
        if outcome is not None:
            raise outcome

    def send_many(self, messages: Sequence[Outgoing]) -> list[Exception | None]:
        with self._lock:
            return self.client.send_many(messages)

    def close(self) -> None:
        with self._lock:
            self.client.close()


class OutboxTransport:
    """Writes each message as an .eml file; the admin's outbox page lists them."""

    def __init__(self, path: Path):
        self.path = path

    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.eml"
        tmp = self.path / f".{name}.tmp"
        # Written to a hidden file, then renamed: a reader never sees half a message.
        with open(tmp, "wb") as f:
            f.write(f"X-Envelope-From: {envelope_from}\r\nX-Envelope-To: {recipient}\r\n".encode())
            f.write(data)
        os.replace(tmp, self.path / name)

    def send_many(self, messages: Sequence[Outgoing]) -> list[Exception | None]:
        results: list[Exception | None] = []
        for msg in messages:
            try:
                self.send(msg.envelope_from, msg.recipient, msg.data)
                results.append(None)
            except OSError as e:  # a full disk: nothing was written, try again later
                results.append(NotAttempted(f"cannot write to the outbox: {e}"))
        return results

    def close(self) -> None:
        pass


def transport_from_settings(settings: Settings) -> Transport:
    if settings.smtp is not None:
        return SmtpTransport(settings.smtp)
    return OutboxTransport(settings.outbox_path)

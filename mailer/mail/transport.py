"""Transports: SMTP for real delivery, an outbox folder of .eml files for the embedded mode."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import uuid
from pathlib import Path
from typing import Protocol

from mailer.config import Settings, SmtpSettings
from mailer.db import utcnow
from mailer.mail.errors import PermanentFailure, TemporaryFailure


class Transport(Protocol):
    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        """Deliver one message or raise TemporaryFailure / PermanentFailure."""

    def close(self) -> None: ...


def classify(code: int, text: str) -> Exception:
    message = f"{code} {text}".strip()
    if 500 <= code < 600:
        return PermanentFailure(message, code)
    return TemporaryFailure(message, code)


class SmtpTransport:
    """One persistent SMTP connection, opened lazily and re-opened after a drop."""

    def __init__(self, cfg: SmtpSettings):
        self.cfg = cfg
        self._conn: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        try:
            if cfg.tls == "ssl":
                conn = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout, context=ssl.create_default_context()
                )
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            conn.ehlo()
            if cfg.tls == "starttls":
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if cfg.username:
                conn.login(cfg.username, cfg.password or "")
        except smtplib.SMTPAuthenticationError as e:
            raise TemporaryFailure(f"SMTP login refused: {e.smtp_code}", e.smtp_code) from e
        except (OSError, smtplib.SMTPException) as e:
            raise TemporaryFailure(f"cannot reach SMTP server {cfg.host}:{cfg.port}: {e}") from e
        return conn

    def send(self, envelope_from: str, recipient: str, data: bytes) -> None:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.sendmail(envelope_from, [recipient], data)
                return
            except smtplib.SMTPRecipientsRefused as e:
                code, text = e.recipients[recipient]
                raise classify(code, text.decode(errors="replace")) from e
            except smtplib.SMTPResponseException as e:
                self._reset()
                raise classify(e.smtp_code, e.smtp_error.decode(errors="replace")) from e
            except (smtplib.SMTPServerDisconnected, ConnectionError) as e:
                # A pooled connection the server closed while idle: reconnect once.
                self._drop()
                if attempt == 2:
                    raise TemporaryFailure(f"SMTP connection lost: {e}") from e
            except (socket.timeout, OSError, smtplib.SMTPException) as e:
                self._drop()
                raise TemporaryFailure(f"SMTP error: {e}") from e

    def _reset(self) -> None:
        try:
            self._conn.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
        self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                pass
        self._drop()


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

    def close(self) -> None:
        pass


def transport_from_settings(settings: Settings) -> Transport:
    if settings.smtp is not None:
        return SmtpTransport(settings.smtp)
    return OutboxTransport(settings.outbox_path)

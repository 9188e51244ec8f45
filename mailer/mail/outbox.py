"""Reading the outbox folder back: newest first, parsed for the admin's outbox page."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

_NAME = re.compile(r"^[0-9T]{21}-[0-9a-f]{12}$")


@dataclass
class OutboxEntry:
    id: str
    at: datetime
    to: str
    subject: str


def _parse(path: Path) -> EmailMessage:
    with open(path, "rb") as f:
        return email.message_from_binary_file(f, policy=email.policy.default)


def list_outbox(folder: Path, offset: int = 0, limit: int = 50) -> tuple[list[OutboxEntry], int]:
    """A page of entries, newest first, and the total count."""
    if not folder.is_dir():
        return [], 0
    names = sorted((p for p in folder.glob("*.eml")), key=lambda p: p.name, reverse=True)
    out = []
    for path in names[offset : offset + limit]:
        msg = _parse(path)
        at = datetime.strptime(path.name[:21], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
        out.append(OutboxEntry(path.stem, at, str(msg["To"] or ""), str(msg["Subject"] or "")))
    return out, len(names)


def read_outbox(folder: Path, entry_id: str) -> tuple[EmailMessage, bytes] | None:
    """The parsed message and its raw bytes, or None for an unknown or malformed id."""
    if not _NAME.match(entry_id):
        return None
    path = folder / f"{entry_id}.eml"
    if not path.is_file():
        return None
    return _parse(path), path.read_bytes()

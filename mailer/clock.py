"""The one clock of the mailer: aware UTC datetimes (tests move it with time-machine).

A leaf module of its own, so that the mail layer, which keeps no database, can stamp Date
headers and the database layer can stamp rows from the same clock.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware."""
    return datetime.now(UTC)

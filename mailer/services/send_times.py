"""Sending an issue at a time an editor chose: draft ⇄ scheduled, and finding issues now due.

The time lives in SQL (issues.send_at), never in the broker; the tick starts due issues
through the delivery engine. An issue stays editable while it waits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import ValidationError
from mailer.models import Issue, IssueStatus
from mailer.services import issue_states as states

MAX_AHEAD = timedelta(days=366)


def parse_local_time(value: str, zone: str) -> datetime:
    """'2027-03-01T07:00' in an IANA time zone, as an aware UTC datetime."""
    try:
        tz = ZoneInfo((zone or "UTC").strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError("timezone", f"Unknown time zone: {zone[:60]!r}; use a name "
                                          "such as Europe/Berlin or UTC.") from None
    try:
        local = datetime.fromisoformat((value or "").strip())
    except ValueError:
        raise ValidationError("send_at", "Give the date and time to send at.") from None
    if local.tzinfo is None:
        # fold=0: in the repeated hour of a DST change, the first of the two.
        local = local.replace(tzinfo=tz)
    return local.astimezone(ZoneInfo("UTC"))


def schedule(session: Session, issue_id: int, at: datetime, now: datetime | None = None) -> None:
    """draft (or scheduled) → scheduled at `at`, which must lie ahead."""
    now = now or utcnow()
    if at <= now + timedelta(minutes=1):
        raise ValidationError("send_at", "The time to send at has passed; choose a later one, "
                                         "or send now.")
    if at > now + MAX_AHEAD:
        raise ValidationError("send_at", "Choose a time within the next year.")
    states.transition(
        session, issue_id, states.SCHEDULE, send_at=at, updated_at=now, status_reason=None
    )


def unschedule(session: Session, issue_id: int) -> None:
    """scheduled → draft: the issue waits for an editor again."""
    states.transition(session, issue_id, states.UNSCHEDULE, send_at=None)


def due(session: Session, now: datetime | None = None, limit: int = 20) -> list[int]:
    """Scheduled issues whose time has come, oldest first."""
    now = now or utcnow()
    return list(session.scalars(
        select(Issue.id)
        .where(Issue.status == IssueStatus.SCHEDULED, Issue.send_at <= now)
        .order_by(Issue.send_at, Issue.id)
        .limit(limit)
    ))


def claim_due(session: Session, issue_id: int, now: datetime | None = None) -> bool:
    """Whether the issue is still scheduled and due; locks its row for the caller's start.

    Without this, an editor who unschedules the issue (scheduled → draft) just as the tick
    picked it up would see it sent anyway, since drafts may be started too.
    """
    now = now or utcnow()
    return bool(session.execute(
        update(Issue)
        .where(Issue.id == issue_id, Issue.status == IssueStatus.SCHEDULED, Issue.send_at <= now)
        .values(updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount)

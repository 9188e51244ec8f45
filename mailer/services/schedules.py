"""Recurring digests: validate schedules, decide which periods are due, record each one once.

A period is identified by its firing instant in UTC. Each (schedule, period) gets exactly one
row in schedule_runs — issued, skipped (nothing new) or missed (too late) — and the unique
constraint on that pair is what lets several schedulers sweep the same database safely: the
second one to insert a period's row fails and leaves the period to the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mailer import cron
from mailer.errors import Conflict, InvalidTransition, NotFound, ValidationError
from mailer.models import (
    Frequency,
    Issue,
    IssueStatus,
    Schedule,
    ScheduleRun,
)
from mailer.services import hooks, issue_edits
from mailer.services.digests import newsletter_for_new_issue
from mailer.services.subscriptions import check_text, parse_sections

ISSUED, SKIPPED, MISSED = "issued", "skipped", "missed"
# After an outage with many missed periods, only the newest ones get a row each.
MISSED_ROWS = 50
MAX_GRACE_HOURS = 7 * 24
LIMITS = {"latest_n": (0, 100), "popular_m": (0, 100), "min_items": (0, 100)}


# --- creating and changing schedules -------------------------------------------------------


def _number(field: str, value, default: int) -> int:
    if value is None or value == "":
        return default
    low, high = LIMITS[field]
    if isinstance(value, bool):
        raise ValidationError(field, f"{field} must be a whole number.")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: 1e400 in JSON is infinity
        raise ValidationError(field, f"{field} must be a whole number.") from None
    if isinstance(value, float) and value != n or not low <= n <= high:
        raise ValidationError(field, f"{field} must be between {low} and {high}.")
    return n


def check_grace(value) -> float | None:
    """Hours a late period may still be made up; None means the global default."""
    if value is None or value == "":
        return None
    try:
        hours = float(value)
    except (TypeError, ValueError):
        raise ValidationError("grace_hours", "grace_hours must be a number of hours.") from None
    if not 0 < hours <= MAX_GRACE_HOURS:
        raise ValidationError(
            "grace_hours", f"grace_hours must be above 0 and at most {MAX_GRACE_HOURS}.")
    return hours


def check_sections(value, known: dict[str, str]) -> str:
    """A schedule's audience sections, by the same rule as readers' choices."""
    return parse_sections(value, known)


def create_schedule(
    session: Session,
    *,
    name,
    cron_text,
    timezone="UTC",
    frequency=None,
    sections=None,
    latest_n=None,
    popular_m=None,
    min_items=None,
    subject=None,
    grace_hours=None,
    known_sections: dict[str, str] | None = None,
    newsletter=None,
) -> Schedule:
    """Validate everything first, then add the schedule (active); ValidationError/Conflict.
    `newsletter` is a Newsletter or a slug (None: the first newsletter); the counts not
    given are its digest defaults; an archived newsletter takes no new schedule."""
    letter = newsletter_for_new_issue(session, newsletter)
    defaults = (letter.latest_n, letter.popular_m, letter.min_items)
    name = check_text("name", name if isinstance(name, str) else None, 100)
    if not name:
        raise ValidationError("name", "Give the schedule a name.")
    if name.isdigit():
        raise ValidationError("name", "The name must not be only digits (those are ids).")
    if not isinstance(cron_text, str):
        raise ValidationError("cron", "cron must be a string like '0 7 * * mon'.")
    spec = cron.parse(cron_text)
    tz = cron.zone(timezone if isinstance(timezone, str) else None)
    raw_freq = frequency or spec.default_frequency
    try:
        freq = Frequency(raw_freq)
    except ValueError:
        raise ValidationError("frequency", "frequency must be weekly or daily.") from None
    latest = _number("latest_n", latest_n, defaults[0])
    popular = _number("popular_m", popular_m, defaults[1])
    if latest + popular == 0:
        raise ValidationError("latest_n", "A digest needs latest or popular articles (or both).")
    if subject is not None and not isinstance(subject, str):
        raise ValidationError("subject", "subject must be a string.")
    # The subject is a template; checking it now spares a failure at firing time.
    subject = issue_edits.check_subject(subject) if subject and subject.strip() else ""
    schedule = Schedule(
        newsletter_id=letter.id,
        name=name,
        cron=spec.text,
        timezone=tz.key,
        audience_frequency=freq,
        audience_sections=check_sections(sections, known_sections or {}),
        subject=subject,
        latest_n=latest,
        popular_m=popular,
        min_items=_number("min_items", min_items, defaults[2]),
        grace_hours=check_grace(grace_hours),
        active=True,
    )
    if session.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
        raise Conflict(f"A schedule named {name!r} exists already.")
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, ref) -> Schedule:
    """A schedule by id or by exact name; NotFound otherwise."""
    text = str(ref).strip()
    if text.isdigit():
        found = session.get(Schedule, int(text))
    else:
        found = session.scalar(select(Schedule).where(Schedule.name == text))
    if found is None:
        raise NotFound(f"There is no schedule {text!r}.")
    return found


def list_schedules(session: Session, newsletter_id: int | None = None) -> list[Schedule]:
    stmt = select(Schedule).order_by(Schedule.name)
    if newsletter_id is not None:
        stmt = stmt.where(Schedule.newsletter_id == newsletter_id)
    return list(session.scalars(stmt))


def remove_schedule(session: Session, schedule: Schedule) -> None:
    """Delete a schedule and its run history; its issues stay (their schedule_id is cleared)."""
    session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id))
    session.delete(schedule)
    session.flush()


def set_active(session: Session, schedule: Schedule, active: bool, now: datetime) -> None:
    """Pause or resume. Periods that pass while paused are not owed after a resume."""
    done = session.execute(
        update(Schedule)
        .where(Schedule.id == schedule.id, Schedule.active.is_(not active))
        # updated_at doubles as "owed from": see owed().
        .values(active=active, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        raise InvalidTransition(
            f"schedule {schedule.name!r}", ["paused" if active else "active"],
            "active" if active else "paused")
    session.refresh(schedule)


# --- time -------------------------------------------------------------------------------


def spec_of(schedule: Schedule) -> tuple[cron.CronSpec, ZoneInfo]:
    return cron.parse(schedule.cron), cron.zone(schedule.timezone)


def next_runs(schedule: Schedule, after: datetime, count: int = 5) -> list[datetime]:
    """The next firing times after `after`, as aware datetimes in the schedule's zone."""
    spec, tz = spec_of(schedule)
    try:
        return [t.astimezone(tz) for t in cron.next_firings(spec, tz, after, count)]
    except OverflowError:  # an `after` near year 1 or 9999: the calendar's edge
        raise ValidationError("after", "after is too far in the past or future.") from None


def iso(when: datetime) -> str:
    """ISO 8601 with the zone's offset, or in UTC where that offset has seconds (local mean
    time before a zone adopted standard time, e.g. Berlin before 1893): RFC 3339 and most
    parsers take only whole minutes."""
    offset = when.utcoffset()
    if offset is not None and offset.total_seconds() % 60:
        when = when.astimezone(UTC)
    return when.isoformat()


def local_label(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{mins} min"] * bool(mins)
    return " ".join(parts) or "under a minute"


@dataclass(frozen=True)
class Plan:
    """What a sweep at `now` owes one schedule: at most one period to fire, and the missed."""

    fire: datetime | None
    missed: list[tuple[datetime, str]]


def plan(spec, tz: ZoneInfo, since: datetime, now: datetime, grace: timedelta) -> Plan:
    """Periods in (since, now]: the latest fires if less than `grace` late; the rest are missed."""
    periods, total = cron.firings_between(spec, tz, since, now, MISSED_ROWS + 1)
    if not periods:
        return Plan(None, [])
    latest = periods[-1]
    missed = [
        (p, (f"Not sent: no scheduler ran at {local_label(p, tz)}, and only the latest "
             f"period ({local_label(latest, tz)}) is made up."))
        for p in periods[:-1]
    ]
    if missed and total > len(periods):
        first, reason = missed[0]
        missed[0] = (first, f"{reason} {total - len(periods)} earlier periods were missed too.")
    late = now - latest
    if late < grace:
        return Plan(latest, missed)
    missed.append((latest, (f"Not sent: the scheduler ran {_duration(late)} after "
                            f"{local_label(latest, tz)}, beyond the grace period of "
                            f"{_duration(grace)}.")))
    return Plan(None, missed)


def grace_for(schedule: Schedule, default_hours: float) -> timedelta:
    hours = schedule.grace_hours if schedule.grace_hours is not None else default_hours
    return timedelta(hours=hours)


def owed(session: Session, now: datetime, default_grace: float) -> dict[int, Plan]:
    """What every active schedule owes at `now` (only those owing something), in two queries.

    Periods are owed after the newest of: the schedule's creation, its last pause or resume
    (updated_at), and the last period recorded for it.
    """
    last = dict(session.execute(
        select(ScheduleRun.schedule_id, func.max(ScheduleRun.period_start))
        .join(Schedule, Schedule.id == ScheduleRun.schedule_id)
        .where(Schedule.active.is_(True))
        .group_by(ScheduleRun.schedule_id)
    ).all())
    out = {}
    for schedule in session.scalars(select(Schedule).where(Schedule.active.is_(True))):
        spec, tz = spec_of(schedule)
        since = max(t for t in (schedule.created_at, schedule.updated_at, last.get(schedule.id))
                    if t is not None)
        p = plan(spec, tz, since, now, grace_for(schedule, default_grace))
        if p.fire or p.missed:
            out[schedule.id] = p
    return out


# --- runs -------------------------------------------------------------------------------


def record_missed(session: Session, schedule: Schedule, missed) -> None:
    """One `missed` row per period; an IntegrityError means another scheduler recorded them."""
    for period, reason in missed:
        run = ScheduleRun(schedule_id=schedule.id, period_start=period, status=MISSED,
                          reason=reason)
        session.add(run)
        session.flush()
        run_event(session, schedule, run)


def claim_period(
    session: Session, schedule: Schedule, period: datetime, reason=None
) -> ScheduleRun:
    """Insert the period's row first: a concurrent scheduler blocks here, then gets an
    IntegrityError once this transaction commits, before it composes anything."""
    run = ScheduleRun(schedule_id=schedule.id, period_start=period, status=ISSUED, reason=reason)
    session.add(run)
    session.flush()
    return run


def settle(run: ScheduleRun, issue: Issue) -> None:
    """Record what the period produced: an issue to send, or a skip with the digest's reason."""
    run.issue_id = issue.id
    if issue.status == IssueStatus.SKIPPED:
        run.status = SKIPPED
        run.reason = issue.status_reason or "Nothing new to send."


def run_event(session: Session, schedule: Schedule, run: ScheduleRun) -> None:
    """The schedule.run webhook event of a period's outcome (issued, skipped, missed)."""
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    hooks.emit(session, "schedule.run", {
        "schedule": {"id": schedule.id, "name": schedule.name, "timezone": schedule.timezone,
                     "newsletter": schedule.newsletter.slug if schedule.newsletter else None},
        "run": {"id": run.id, "period_start": iso(run.period_start), "status": run.status,
                "reason": run.reason, "issue_id": run.issue_id},
    })


def manual_period(now: datetime) -> datetime:
    """`run-now` keys its issue on the current minute: a double click makes one issue."""
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def recent_runs(session: Session, schedule_id: int | None = None, limit: int = 20,
                offset: int = 0) -> list[ScheduleRun]:
    q = select(ScheduleRun).order_by(ScheduleRun.period_start.desc(), ScheduleRun.id.desc())
    if schedule_id is not None:
        q = q.where(ScheduleRun.schedule_id == schedule_id)
    return list(session.scalars(q.offset(offset).limit(limit)))


def count_runs(session: Session, schedule_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
    ) or 0


def last_runs(session: Session) -> dict[int, ScheduleRun]:
    """The newest run of every schedule, by schedule id."""
    newest = (
        select(ScheduleRun.schedule_id, func.max(ScheduleRun.period_start).label("p"))
        .group_by(ScheduleRun.schedule_id)
        .subquery()
    )
    rows = session.scalars(
        select(ScheduleRun).join(
            newest,
            (ScheduleRun.schedule_id == newest.c.schedule_id)
            & (ScheduleRun.period_start == newest.c.p),
        )
    )
    return {r.schedule_id: r for r in rows}


def as_dict(
    schedule: Schedule, now: datetime, count: int = 3, last: ScheduleRun | None = None
) -> dict:
    """The JSON form shared by `schedule list --json` and the API."""
    spec, tz = spec_of(schedule)
    nexts = next_runs(schedule, now, count) if schedule.active else []
    return {
        "id": schedule.id,
        "name": schedule.name,
        "newsletter": schedule.newsletter.slug if schedule.newsletter is not None else None,
        "cron": schedule.cron,
        "description": cron.describe(spec),
        "timezone": schedule.timezone,
        "frequency": schedule.audience_frequency.value,
        "sections": [s for s in schedule.audience_sections.split(",") if s],
        "subject": schedule.subject,
        "latest_n": schedule.latest_n,
        "popular_m": schedule.popular_m,
        "min_items": schedule.min_items,
        "grace_hours": schedule.grace_hours,
        "active": schedule.active,
        "status": "active" if schedule.active else "paused",
        "next_runs": [iso(t) for t in nexts],
        "last_run": run_dict(last, tz) if last else None,
        "created_at": schedule.created_at.isoformat(),
    }


def run_dict(run: ScheduleRun, tz: ZoneInfo) -> dict:
    return {
        "id": run.id,
        "period_start": run.period_start.isoformat(),
        "period_local": iso(run.period_start.astimezone(tz)),
        "status": run.status,
        "reason": run.reason,
        "issue_id": run.issue_id,
        "reported_at": run.reported_at.isoformat() if run.reported_at else None,
    }


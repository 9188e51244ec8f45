"""The ops report of a schedule's run: when it is owed, sent once, and what it says."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from mailer import cron
from mailer.models import Issue, IssueStatus, Schedule, ScheduleRun
from mailer.services import deliveries
from mailer.services.schedules import ISSUED, SKIPPED, local_label

# How long an unreported run is still worth a report (a send of a few hours, retries).
REPORT_WINDOW = timedelta(days=3)
DONE = (IssueStatus.FINISHED, IssueStatus.CANCELLED)


def reports_owed(session: Session, now: datetime, run_id: int | None = None,
                 claimed: bool = False) -> list[int]:
    """Runs whose outcome is final and whose summary has not gone out yet (with `claimed`:
    those a report task has claimed and not finished)."""
    final = or_(
        ScheduleRun.status != ISSUED,
        ScheduleRun.issue_id.is_(None),  # the issue was deleted
        Issue.status.in_(DONE + (IssueStatus.SKIPPED,)),
    )
    at = ScheduleRun.reported_at
    reported = at.is_not(None) if claimed else at.is_(None)
    q = (
        select(ScheduleRun.id)
        .outerjoin(Issue, Issue.id == ScheduleRun.issue_id)
        .where(reported, ScheduleRun.created_at > now - REPORT_WINDOW, final)
        .order_by(ScheduleRun.id)
    )
    if run_id is not None:
        q = q.where(ScheduleRun.id == run_id)
    return list(session.scalars(q))


def claim_report(session: Session, run_id: int, now: datetime) -> bool:
    """Mark the run reported; False if another worker did first (so it goes out once)."""
    return session.execute(
        update(ScheduleRun)
        .where(ScheduleRun.id == run_id, ScheduleRun.reported_at.is_(None))
        .values(reported_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount == 1


def release_report(session: Session, run_id: int) -> None:
    """Give a claim back after every channel failed, so a later try may take it."""
    session.execute(
        update(ScheduleRun)
        .where(ScheduleRun.id == run_id)
        .values(reported_at=None)
        .execution_options(synchronize_session=False)
    )


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    """The report's counts from the delivery engine's status of the issue."""
    st = deliveries.status(session, issue_id)
    c, withdrawn = st["counts"], st["withdrawn"]
    return {
        "sent": c["sent"],
        "failed": c["failed_temporary"],
        # Permanent failures minus the readers who left before their turn came.
        "bounced": c["failed_permanent"] - withdrawn,
        "uncertain": c["uncertain"],
        "withdrawn": withdrawn,
        "total": st["total"],
    }


def summary(session: Session, run_id: int, base_url: str) -> dict | None:
    """The report of one run as plain data: the webhook's JSON and the mail's content."""
    run = session.get(ScheduleRun, run_id)
    if run is None:
        return None
    schedule = session.get(Schedule, run.schedule_id)
    tz = cron.zone(schedule.timezone)
    issue = session.get(Issue, run.issue_id) if run.issue_id else None
    counts = delivery_counts(session, issue.id) if issue else None
    if run.status != ISSUED:
        outcome = run.status
    elif issue is None:
        outcome = "deleted"
    else:
        outcome = {IssueStatus.FINISHED: "sent", IssueStatus.CANCELLED: "cancelled",
                   IssueStatus.SKIPPED: SKIPPED}.get(issue.status, str(issue.status))
    when = local_label(run.period_start, tz)
    if outcome in ("sent", "cancelled"):
        words = (f"{outcome}: sent {counts['sent']}, failed {counts['failed']}, "
                 f"bounced {counts['bounced']}")
        if counts["uncertain"]:
            words += f", uncertain {counts['uncertain']}"
    else:
        words = f"{outcome}: {run.reason or issue and issue.status_reason or 'no reason recorded'}"
    iso = lambda d: d.isoformat() if d else None
    return {
        "event": "schedule.run",
        "schedule": {"id": schedule.id, "name": schedule.name, "timezone": schedule.timezone},
        "run_id": run.id,
        "period_start": iso(run.period_start),
        "period_local": iso(run.period_start.astimezone(tz)),
        "outcome": outcome,
        "reason": run.reason if run.status != ISSUED else (issue.status_reason if issue else None),
        "issue": {
            "id": issue.id, "status": str(issue.status), "started_at": iso(issue.started_at),
            "finished_at": iso(issue.finished_at),
        } if issue else None,
        "counts": counts,
        # Chat webhooks (Slack, Mattermost) show `text` as the message.
        "text": f"{schedule.name} ({when}) {words}.",
        "url": f"{base_url}/admin/schedules/{schedule.id}",
    }

"""Scheduled digests: the sweep in the 30-second tick that fires them, and the ops report.

No Celery ETAs: firing times live in SQL (the schedules), and every tick asks which periods
are owed. Several beat or worker hosts may tick at once; the unique (schedule, period) rows
make the second one's insert fail, so each period produces one issue.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime

from celery import shared_task
from sqlalchemy.exc import IntegrityError

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.db import db
from mailer.errors import MailerError
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.mail.look import Look
from mailer.mail.templates import render_pair
from mailer.models import IssueStatus, Schedule
from mailer.runtime import runtime
from mailer.services import deliveries, digests, schedules
from mailer.services import schedule_reports as reports
from mailer.tasks.base import enqueue, register_tick_step

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0


# --- firing -----------------------------------------------------------------------------


def fire_period(schedule_id: int, period: datetime, now: datetime, reason: str | None = None,
                manual: bool = False):
    """Claim one period, compose its issue and start sending it; the run, or None if the
    period was taken by another scheduler (or the schedule was paused or removed meanwhile).
    Owns its transaction; its commit hands the first batches to the workers."""
    rt = runtime()
    try:
        with db.transaction() as s:
            schedule = s.get(Schedule, schedule_id)
            if schedule is None or not (schedule.active or manual):
                return None
            run = schedules.claim_period(s, schedule, period, reason)
            issue = digests.create_issue(
                s, rt.settings, rt.popularity, now=now,
                newsletter=schedule.newsletter,
                subject=schedule.subject or None,
                audience_frequency=schedule.audience_frequency,
                audience_sections=schedule.audience_sections,
                latest_n=schedule.latest_n,
                popular_m=schedule.popular_m,
                min_items=schedule.min_items,
                schedule_id=schedule.id,
                period_start=period,
            )
            schedules.settle(run, issue)
            schedules.run_event(s, schedule, run)
            if issue.status == IssueStatus.DRAFT:
                # Same transaction: an issue exists for the period only with its audience
                # frozen, so a crash here leaves nothing half-started for the next tick.
                deliveries.start_send(s, issue.id, settings=rt.settings)
    except IntegrityError:
        log.info("schedule %s period %s was fired by another scheduler", schedule_id, period)
        return None
    log.info("schedule %s fired for %s: %s (issue %s)", schedule_id, period, run.status,
             run.issue_id)
    return run


def fire_schedules(now: datetime | None = None) -> dict:
    """The tick step: record missed periods and fire the one that is due, per schedule."""
    rt = runtime()
    now = now or utcnow()
    grace = rt.settings.schedule_grace_hours
    with db.transaction() as s:
        owed = schedules.owed(s, now, grace)
    done: Counter = Counter()
    for schedule_id, p in owed.items():
        if p.missed:
            try:
                with db.transaction() as s:
                    schedules.record_missed(s, s.get(Schedule, schedule_id), p.missed)
                done["missed"] += len(p.missed)
            except IntegrityError:
                done["taken"] += 1
                continue  # another scheduler recorded them; it also owns the rest of the plan
        if p.fire:
            try:
                run = fire_period(schedule_id, p.fire, now)
            except MailerError as e:
                # The schedule no longer fits the configuration (a section was removed, say):
                # record the period as skipped with the reason, so ops see it and get a report.
                run = _record_skip(schedule_id, p.fire, f"Not composed: {e}")
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s could not fire for %s", schedule_id, p.fire)
                done["failed"] += 1
                continue
            done[run.status if run else "taken"] += 1
    return dict(done)


def _record_skip(schedule_id: int, period: datetime, reason: str):
    try:
        with db.transaction() as s:
            run = schedules.claim_period(s, s.get(Schedule, schedule_id), period, reason)
            run.status = schedules.SKIPPED
            schedules.run_event(s, s.get(Schedule, schedule_id), run)
    except IntegrityError:
        return None
    log.warning("schedule %s skipped %s: %s", schedule_id, period, reason)
    return run


# --- reports ----------------------------------------------------------------------------


def sweep_reports(now: datetime | None = None) -> int:
    """The tick step: hand every finished, skipped or missed run's report to a worker."""
    settings = runtime().settings
    if not (settings.ops_email or settings.report_webhook):
        return 0
    with db.transaction() as s:
        owed = reports.reports_owed(s, now or utcnow())
    for run_id in owed:
        enqueue(send_schedule_report, run_id)
    return len(owed)


def _mail(settings: Settings, report: dict) -> None:
    rt = runtime()
    # Mail to the site's operators: the plain look, no newsletter's.
    text, html = render_pair("schedule_report", report=report, list_name=settings.list_name,
                             postal_address=settings.postal_address,
                             look=Look(title=settings.list_name))
    subject = f"[{settings.list_name}] {report['text'].rstrip('.')}"
    for to in [a.strip() for a in settings.ops_email.split(",") if a.strip()]:
        out = rt.composer.message(to=to, subject=subject[:250], text=text, html=html)
        rt.transport.send(out.envelope_from, out.recipient, out.data)


def _post(url: str, report: dict) -> None:
    import httpx  # here, not at the top: a sending worker should not carry the HTTP client

    body = json.dumps(report).encode()
    try:
        resp = httpx.post(url, content=body, timeout=WEBHOOK_TIMEOUT,
                          headers={"Content-Type": "application/json",
                                   "User-Agent": "mailer-schedule-report"})
    except httpx.HTTPError as e:
        raise TemporaryFailure(f"report webhook unreachable: {e}") from e
    if resp.status_code >= 500 or resp.status_code == 429:
        raise TemporaryFailure(f"report webhook answered {resp.status_code}")
    if resp.status_code >= 400:
        raise PermanentFailure(f"report webhook refused the report: {resp.status_code}")


REPORT_RETRIES = 5


@shared_task(name="mailer.send_schedule_report", bind=True, max_retries=REPORT_RETRIES)
def send_schedule_report(self, run_id: int) -> str:
    """Send one run's summary to the ops address and the webhook, once."""
    settings = runtime().settings
    if not (settings.ops_email or settings.report_webhook):
        return "no ops address or webhook configured"  # leave it for a worker that has one
    now = utcnow()
    retrying = self.request.retries > 0 and not self.request.called_directly
    with db.transaction() as s:
        # A retry holds the claim of its first try; a fresh task must win a new one.
        owed = reports.reports_owed(s, now, run_id, claimed=retrying)
        if not owed:
            return "not owed"
        report = reports.summary(s, run_id, settings.base_url)
        if not retrying and not reports.claim_report(s, run_id, now):
            return "already reported"
    channels = []
    if settings.ops_email:
        channels.append(lambda: _mail(settings, report))
    if settings.report_webhook:
        channels.append(lambda: _post(settings.report_webhook, report))
    delivered, temporary = 0, None
    for send in channels:
        try:
            send()
            delivered += 1
        except TemporaryFailure as e:
            temporary = e
            log.warning("schedule report %s: %s", run_id, e)
        except PermanentFailure as e:
            log.warning("schedule report %s refused: %s", run_id, e)
    if temporary is not None and not delivered:
        if not self.request.called_directly and self.request.retries < REPORT_RETRIES:
            # Keep the claim while Celery retries with backoff, so the sweep adds no copies.
            raise self.retry(exc=temporary, countdown=min(120, 10 * 2 ** self.request.retries))
        # Out of retries: give the claim back; a later tick's sweep tries again.
        with db.transaction() as s:
            reports.release_report(s, run_id)
        raise temporary
    return "sent" if delivered else "refused"


register_tick_step(fire_schedules)
register_tick_step(sweep_reports)

"""Sending an issue from the console: the confirmation with the audience size, send now or at
a time, the live view (polled as JSON), pause/resume/cancel, and the report afterwards."""

from __future__ import annotations

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from mailer.db import db
from mailer.errors import InvalidTransition, MailerError, ValidationError
from mailer.models import IssueStatus
from mailer.runtime import runtime
from mailer.services import (
    deliveries,
    issue_edits,
    issue_states,
    progress,
    render,
    reports,
    send_times,
)
from mailer.web import auth
from mailer.web.admin.charts import bar_chart
from mailer.web.admin.console import page_count, paging
from mailer.web.admin.issues import EDITOR_ROLES, READER_ROLES, issue_home

bp = Blueprint("admin_sending", __name__, url_prefix="/admin/issues")

I = IssueStatus  # noqa: E741
BOUNCES_PER_PAGE = 50
STATE_LABELS = {
    "pending": "Waiting", "sending": "Being sent", "sent": "Sent",
    "failed_temporary": "Will be retried", "failed_permanent": "Refused (bounced)",
    "uncertain": "Uncertain",
}
STATUS_TEXT = {
    I.DRAFT: "Draft", I.SCHEDULED: "Scheduled", I.SENDING: "Sending", I.PAUSED: "Paused",
    I.FINISHED: "Finished", I.CANCELLED: "Cancelled", I.SKIPPED: "Skipped",
}


def _already(issue) -> str:
    if issue.status in (I.SENDING, I.PAUSED):
        since = f" since {issue.started_at:%H:%M} UTC" if issue.started_at else ""
        return f"Issue {issue.id} is already being sent{since}: here is its progress."
    if issue.status == I.FINISHED:
        return f"Issue {issue.id} was already sent."
    return f"Issue {issue.id} is {issue.status}; it cannot be sent."


@bp.get("/<int:issue_id>/send")
@auth.login_required(*EDITOR_ROLES)
def confirm(issue_id: int):
    return _confirm_page(issue_id)


def _confirm_page(issue_id: int, error: str | None = None, status: int = 200, form=None):
    rt = runtime()
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status not in issue_states.EDITABLE:
        flash(_already(issue))
        return redirect(issue_home(issue))
    preview = render.render_preview(db.session, issue, "", rt.settings)
    return render_template(
        "admin/send_confirm.html", issue=issue, preview=preview, error=error, form=form or {},
        audience=reports.audience(db.session, issue, rt.settings),
        section_labels=rt.settings.section_labels,
    ), status


@bp.post("/<int:issue_id>/send")
@auth.login_required(*EDITOR_ROLES)
def send(issue_id: int):
    """Start sending now. Idempotent: a double click or a second editor starts nothing more."""
    rt = runtime()
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status in issue_states.EDITABLE:
        audience = reports.audience(db.session, issue, rt.settings)
        if audience["readers"] == 0:
            return _confirm_page(issue_id, "Nobody would get this issue: there are no active "
                                 "readers with articles in it.", 400)
    try:
        # The conditional UPDATE inside start_send lets exactly one request through.
        result = deliveries.start_send(db.session, issue_id, settings=rt.settings)
        db.session.commit()
    except InvalidTransition:
        db.session.rollback()
        issue = issue_edits.get_issue(db.session, issue_id)
        flash(_already(issue))
        return redirect(issue_home(issue))
    flash(f"Sending to {result.deliveries} readers started.")
    return redirect(url_for("admin_sending.sending", issue_id=issue_id))


@bp.post("/<int:issue_id>/schedule")
@auth.login_required(*EDITOR_ROLES)
def schedule(issue_id: int):
    form = request.form
    issue = issue_edits.get_issue(db.session, issue_id)
    try:
        if reports.audience(db.session, issue, runtime().settings)["readers"] == 0:
            raise ValidationError("send_at", "Nobody would get this issue: there are no active "
                                             "readers with articles in it.")
        at = send_times.parse_local_time(form.get("send_at", ""), form.get("timezone", "UTC"))
        send_times.schedule(db.session, issue_id, at)
        db.session.commit()
    except ValidationError as e:
        db.session.rollback()
        return _confirm_page(issue_id, e.message, 400, form)
    except InvalidTransition:
        db.session.rollback()
        flash(_already(issue))
        return redirect(issue_home(issue))
    flash(f"Issue {issue_id} will be sent at {at:%Y-%m-%d %H:%M} UTC. It stays editable until "
          "then.")
    return redirect(url_for("admin_issues.compose", issue_id=issue_id))


@bp.post("/<int:issue_id>/unschedule")
@auth.login_required(*EDITOR_ROLES)
def unschedule(issue_id: int):
    try:
        send_times.unschedule(db.session, issue_id)
        db.session.commit()
        flash("The send time is cleared: the issue is a draft again.")
    except InvalidTransition:
        db.session.rollback()
        flash(_already(issue_edits.get_issue(db.session, issue_id)), "error")
    return redirect(issue_home(issue_edits.get_issue(db.session, issue_id)))


def _progress(issue_id: int) -> dict:
    """deliveries.status (a recent count while sending: services.progress) plus what the
    page shows: percent done, rate and ETA in words."""
    data = progress.watched_status(db.session, issue_id, runtime().settings.redis_url)
    total, done = data["total"], data["done"]
    final = data["status"] in (I.FINISHED, I.CANCELLED)
    percent = 100 if (total == 0 and final) else (int(100 * done / total) if total else 0)
    eta = data["eta_seconds"]
    if data["status"] == I.SENDING:
        eta_text = _duration(eta) if eta is not None else "working it out"
        rate_text = f"{data['rate']:g} per second"
    else:
        eta_text = "—"
        rate_text = "—"
    fields = {
        "status_text": STATUS_TEXT.get(IssueStatus(data["status"]), data["status"]),
        "percent": percent, "percent_text": f"{percent}%", "done": done, "total": total,
        "remaining": data["remaining"], "rate_text": rate_text, "eta_text": eta_text,
        "reason": data["reason"] or "",
        **{f"count_{state}": n for state, n in data["counts"].items()},
    }
    return {**data, "percent": percent, "state": data["status"], "final": final,
            "fields": fields}


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"about {max(seconds, 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


@bp.get("/<int:issue_id>/sending")
@auth.login_required(*READER_ROLES)
def sending(issue_id: int):
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status in issue_states.EDITABLE or issue.status == I.SKIPPED:
        return redirect(issue_home(issue))
    return render_template(
        "admin/sending.html", issue=issue, progress=_progress(issue_id), labels=STATE_LABELS,
        subject=reports.sent_subjects(db.session, [issue_id]).get(issue_id, issue.subject),
    )


@bp.get("/<int:issue_id>/status")
@auth.login_required(*READER_ROLES)
def status(issue_id: int):
    """What the sending view polls."""
    resp = jsonify(_progress(issue_id))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/<int:issue_id>/<any(pause, resume, cancel):action>")
@auth.login_required(*READER_ROLES)
def control(issue_id: int, action: str):
    who = auth.current_user().email
    try:
        if action == "pause":
            deliveries.pause(db.session, issue_id, f"Paused by {who}.")
        elif action == "resume":
            deliveries.resume(db.session, issue_id, runtime().settings)
        else:
            deliveries.cancel(db.session, issue_id)
        db.session.commit()
    except MailerError as e:
        db.session.rollback()
        flash(f"That did not work: {e}", "error")
    else:
        flash({"pause": "Paused: messages already on their way finish, no new ones start.",
               "resume": "Resumed: sending goes on where it stopped.",
               "cancel": "Cancelled: readers not yet mailed will not get this issue."}[action])
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status == I.CANCELLED and issue.started_at is None:
        return redirect(url_for("admin_issues.index"))
    return redirect(url_for("admin_sending.sending", issue_id=issue_id)
                    if issue.status in (I.SENDING, I.PAUSED) else issue_home(issue))


@bp.post("/<int:issue_id>/resend-uncertain")
@auth.login_required(*READER_ROLES)
def resend_uncertain(issue_id: int):
    try:
        count = deliveries.resend_uncertain(db.session, issue_id, runtime().settings)
        db.session.commit()
    except MailerError as e:
        db.session.rollback()
        flash(f"That did not work: {e}", "error")
        return redirect(url_for("admin_sending.report", issue_id=issue_id))
    flash(f"{count} uncertain message(s) are being sent again.")
    return redirect(url_for("admin_sending.sending", issue_id=issue_id))


@bp.get("/<int:issue_id>/report")
@auth.login_required(*READER_ROLES)
def report(issue_id: int):
    issue = issue_edits.get_issue(db.session, issue_id)
    if issue.status in issue_states.EDITABLE:
        return redirect(issue_home(issue))
    sent = _progress(issue_id)
    counts = reports.issue_counts(db.session, [issue_id])[issue_id]
    clicks = reports.clicks_per_item(db.session, issue_id)
    page, offset = paging(BOUNCES_PER_PAGE)
    bounced, bounced_total = reports.bounces(db.session, issue_id, offset, BOUNCES_PER_PAGE)
    states = [(STATE_LABELS[s], n, f"s-{s}") for s, n in sent["counts"].items()]
    return render_template(
        "admin/report.html", issue=issue, progress=sent, counts=counts, labels=STATE_LABELS,
        subject=reports.sent_subjects(db.session, [issue_id]).get(issue_id, issue.subject),
        clicks=clicks, bounced=bounced, bounced_total=bounced_total, page=page,
        pages=page_count(bounced_total, BOUNCES_PER_PAGE), pager_args={"issue_id": issue_id},
        uncertain=deliveries.uncertain_rows(db.session, issue_id, 100),
        opens=reports.opens(db.session, issue_id) if runtime().settings.open_pixel else None,
        state_chart=bar_chart(f"Messages of issue {issue_id} by state",
                              "How many of the issue's messages are in each delivery state.",
                              states),
        click_chart=bar_chart(f"Clicks per article in issue {issue_id}",
                              "Counted clicks (bots and mail scanners left out) per article.",
                              [(c["title"], c["clicks"], "s-clicks") for c in clicks])
        if clicks else None,
    )

"""The console's schedules: next runs in local time, recent runs and their outcome, actions."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.routing import BuildError

from mailer import cron
from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import Conflict, MailerError, NotFound, ValidationError
from mailer.models import Role
from mailer.services import digests, schedules
from mailer.web import auth
from mailer.web.extensions import settings

bp = Blueprint("admin_schedules", __name__, url_prefix="/admin/schedules")

RUNS_PER_PAGE = 25


def _view(schedule, last=None, count=3) -> dict:
    item = schedules.as_dict(schedule, utcnow(), count, last)
    item["newsletter_name"] = schedule.newsletter.name if schedule.newsletter else "—"
    tz = cron.zone(schedule.timezone)
    item["next_local"] = [schedules.local_label(t, tz) for t in
                          schedules.next_runs(schedule, utcnow(), count)] if schedule.active else []
    return item


def _issue_url(issue_id: int | None) -> str | None:
    """The console's page of an issue, where this console has one."""
    if issue_id is None:
        return None
    try:
        return url_for("admin_issues.compose", issue_id=issue_id)
    except BuildError:
        return None


def _run_rows(runs, names: dict[int, tuple[str, str]]) -> list[dict]:
    rows = []
    for r in runs:
        name, tz_name = names[r.schedule_id]
        rows.append({"run": r, "schedule": name, "issue_url": _issue_url(r.issue_id),
                     "local": schedules.local_label(r.period_start, cron.zone(tz_name))})
    return rows


@bp.get("")
@auth.login_required(Role.OPS)
def index():
    letter = digests.newsletter_filter(db.session, request.args.get("newsletter"))
    all_schedules = schedules.list_schedules(
        db.session, newsletter_id=letter.id if letter else None)
    last = schedules.last_runs(db.session)
    names = {s.id: (s.name, s.timezone) for s in all_schedules}
    return render_template(
        "admin/schedules.html",
        items=[_view(s, last.get(s.id)) for s in all_schedules],
        runs=_run_rows([r for r in schedules.recent_runs(db.session, limit=20)
                        if r.schedule_id in names], names),
        newsletters=digests.newsletter_options(db.session),
        newsletter=letter.slug if letter else "",
    )


@bp.route("/new", methods=["GET", "POST"])
@auth.login_required(Role.OPS)
def new():
    cfg = settings()
    form = request.form if request.method == "POST" else {}
    error = None
    if request.method == "POST":
        try:
            schedule = schedules.create_schedule(
                db.session,
                name=form.get("name", ""), cron_text=form.get("cron", ""),
                timezone=form.get("timezone", ""), frequency=form.get("frequency") or None,
                sections=form.getlist("sections"),
                latest_n=form.get("latest_n"), popular_m=form.get("popular_m"),
                min_items=form.get("min_items"), subject=form.get("subject") or None,
                grace_hours=form.get("grace_hours"), known_sections=cfg.section_labels,
                newsletter=form.get("newsletter") or None,
            )
            db.session.commit()
            flash(f"Schedule {schedule.name!r} added.")
            return redirect(url_for("admin_schedules.show", schedule_id=schedule.id))
        except (ValidationError, Conflict, NotFound) as e:
            db.session.rollback()
            error = getattr(e, "message", str(e))
    open_ = [n for n in digests.newsletter_options(db.session) if n.archived_at is None]
    # One newsletter: its digest defaults fill the form; several: each brings its own.
    only = open_[0] if len(open_) == 1 else None
    return render_template(
        "admin/schedules_new.html", form=form, error=error, sections=cfg.sections,
        defaults=(only.latest_n, only.popular_m, only.min_items) if only else ("", "", ""),
        open_newsletters=open_, grace=cfg.schedule_grace_hours,
    ), 400 if error else 200


@bp.get("/<int:schedule_id>")
@auth.login_required(Role.OPS)
def show(schedule_id: int):
    schedule = schedules.get_schedule(db.session, schedule_id)
    page = max(1, request.args.get("page", 1, type=int))
    total = schedules.count_runs(db.session, schedule.id)
    runs = schedules.recent_runs(db.session, schedule.id, RUNS_PER_PAGE,
                                 (page - 1) * RUNS_PER_PAGE)
    return render_template(
        "admin/schedules_show.html",
        item=_view(schedule, count=10),
        runs=_run_rows(runs, {schedule.id: (schedule.name, schedule.timezone)}),
        total=total, page=page, pages=max(1, -(-total // RUNS_PER_PAGE)),
        pager_args={"schedule_id": schedule.id},
        grace=schedule.grace_hours or settings().schedule_grace_hours,
    )


@bp.post("/<int:schedule_id>/<any(pause, resume):action>")
@auth.login_required(Role.OPS)
def set_active(schedule_id: int, action: str):
    schedule = schedules.get_schedule(db.session, schedule_id)
    try:
        schedules.set_active(db.session, schedule, action == "resume", utcnow())
        db.session.commit()
        flash(f"Schedule {schedule.name!r} {'resumed' if action == 'resume' else 'paused'}.")
    except MailerError as e:
        db.session.rollback()
        flash(str(e), "error")
    return redirect(url_for("admin_schedules.show", schedule_id=schedule_id))


@bp.post("/<int:schedule_id>/run-now")
@auth.login_required(Role.OPS)
def run_now(schedule_id: int):
    from mailer.tasks.schedules import fire_period

    schedules.get_schedule(db.session, schedule_id)  # 404 for an unknown id
    who = auth.current_user().email
    db.session.rollback()  # fire_period owns its transaction
    now = utcnow()
    try:
        run = fire_period(schedule_id, schedules.manual_period(now), now,
                          reason=f"Started by hand by {who}.", manual=True)
    except MailerError as e:
        run = None
        flash(str(e), "error")
    else:
        if run is None:
            flash("This schedule already fired this minute.", "error")
        elif run.status == schedules.SKIPPED:
            flash(f"Skipped: {run.reason}", "error")
        else:
            flash(f"Issue {run.issue_id} is being sent.")
    return redirect(url_for("admin_schedules.show", schedule_id=schedule_id))


@bp.post("/<int:schedule_id>/delete")
@auth.login_required(Role.OPS)
def delete(schedule_id: int):
    schedule = schedules.get_schedule(db.session, schedule_id)
    name = schedule.name
    schedules.remove_schedule(db.session, schedule)
    db.session.commit()
    flash(f"Schedule {name!r} deleted; its issues stay in the archive.")
    return redirect(url_for("admin_schedules.index"))

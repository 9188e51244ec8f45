"""The schedules API under /api/v1/schedules (bearer tokens; ops and admin)."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, jsonify, request

from mailer import cron
from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import Role
from mailer.services import digests, schedules
from mailer.web.api.requests import request_data
from mailer.web.auth import bearer_user
from mailer.web.extensions import settings

bp = Blueprint("schedules", __name__, url_prefix="/schedules")

FIELDS = {"name", "newsletter", "cron", "timezone", "frequency", "sections", "latest_n", "popular_m",
          "min_items", "subject", "grace_hours"}


@bp.before_request
def _auth():
    bearer_user(Role.OPS)


def _schedule(schedule_id: int):
    return schedules.get_schedule(db.session, schedule_id)


def _item(schedule, count: int = 3) -> dict:
    last = schedules.recent_runs(db.session, schedule.id, limit=1)
    return schedules.as_dict(schedule, utcnow(), count, last[0] if last else None)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationError(name, f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


@bp.get("")
def index():
    letter = digests.newsletter_filter(db.session, request.args.get("newsletter"))
    last = schedules.last_runs(db.session)
    now = utcnow()
    found = schedules.list_schedules(db.session, newsletter_id=letter.id if letter else None)
    return jsonify({"schedules": [schedules.as_dict(s, now, 3, last.get(s.id)) for s in found]})


@bp.post("")
def create():
    data = request_data()
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"Unknown field {unknown[0]!r}; "
                                          f"known: {', '.join(sorted(FIELDS))}.")
    cfg = settings()
    try:
        schedule = schedules.create_schedule(
            db.session,
            name=data.get("name"), cron_text=data.get("cron"),
            timezone=data.get("timezone", "UTC"), frequency=data.get("frequency"),
            sections=data.get("sections"), latest_n=data.get("latest_n"),
            popular_m=data.get("popular_m"), min_items=data.get("min_items"),
            subject=data.get("subject"), grace_hours=data.get("grace_hours"),
            known_sections=cfg.section_labels, newsletter=data.get("newsletter"),
        )
    except (ValidationError, Conflict, NotFound):
        db.session.rollback()
        raise
    db.session.commit()
    return jsonify(_item(schedule)), 201


@bp.get("/<int:schedule_id>")
def show(schedule_id: int):
    schedule = _schedule(schedule_id)
    tz = cron.zone(schedule.timezone)
    item = _item(schedule, 5)
    item["recent_runs"] = [schedules.run_dict(r, tz)
                           for r in schedules.recent_runs(db.session, schedule.id, limit=10)]
    return jsonify(item)


@bp.delete("/<int:schedule_id>")
def remove(schedule_id: int):
    schedules.remove_schedule(db.session, _schedule(schedule_id))
    db.session.commit()
    return "", 204


def _set_active(schedule_id: int, active: bool):
    schedule = _schedule(schedule_id)
    schedules.set_active(db.session, schedule, active, utcnow())
    db.session.commit()
    return jsonify(_item(schedule))


@bp.post("/<int:schedule_id>/pause")
def pause(schedule_id: int):
    return _set_active(schedule_id, False)


@bp.post("/<int:schedule_id>/resume")
def resume(schedule_id: int):
    return _set_active(schedule_id, True)


@bp.get("/<int:schedule_id>/next")
def next_runs(schedule_id: int):
    schedule = _schedule(schedule_id)
    tz = cron.zone(schedule.timezone)
    count = _int_arg("count", 5, 1, 1000)
    after = utcnow()
    if request.args.get("after"):
        try:
            after = datetime.fromisoformat(request.args["after"])
        except ValueError:
            raise ValidationError("after", "after must be an ISO 8601 time.") from None
        after = after if after.tzinfo else after.replace(tzinfo=tz)
    times = schedules.next_runs(schedule, after, count)
    return jsonify({"id": schedule.id, "timezone": tz.key,
                    "next_runs": [schedules.iso(t) for t in times]})


@bp.get("/<int:schedule_id>/runs")
def runs(schedule_id: int):
    schedule = _schedule(schedule_id)
    tz = cron.zone(schedule.timezone)
    limit = _int_arg("limit", 20, 1, 200)
    offset = _int_arg("offset", 0, 0, 10**9)
    return jsonify({
        "total": schedules.count_runs(db.session, schedule.id),
        "runs": [schedules.run_dict(r, tz)
                 for r in schedules.recent_runs(db.session, schedule.id, limit, offset)],
    })


@bp.post("/<int:schedule_id>/run-now")
def run_now(schedule_id: int):
    from mailer.tasks.schedules import fire_period

    schedule = _schedule(schedule_id)
    db.session.rollback()  # fire_period owns its own transaction
    now = utcnow()
    run = fire_period(schedule.id, schedules.manual_period(now), now,
                      reason="Started by hand (API run-now).", manual=True)
    if run is None:
        raise Conflict("This schedule was already fired this minute.")
    return jsonify(schedules.run_dict(run, cron.zone(schedule.timezone))), 202


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError):
    # The same shape as the rest of the API's validation errors.
    return jsonify({"error": "invalid", "field": e.field, "message": e.message}), 400

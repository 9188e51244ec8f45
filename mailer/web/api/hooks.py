"""Outgoing webhook endpoints under /api/v1/webhooks (bearer tokens; ops and admin)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from mailer.db import db
from mailer.errors import ValidationError
from mailer.models import Role
from mailer.services import hook_endpoints
from mailer.web.api.requests import FORM_TYPES, request_data
from mailer.web.auth import bearer_user
from mailer.web.extensions import settings

bp = Blueprint("webhooks_api", __name__, url_prefix="/webhooks")

FIELDS = {"url", "events", "personal_data", "description"}


@bp.before_request
def _auth():
    bearer_user(Role.OPS)


@bp.get("")
def index():
    return jsonify({"webhooks": [hook_endpoints.endpoint_dict(e)
                                 for e in hook_endpoints.all_endpoints(db.session)]})


@bp.post("")
def create():
    data = request_data()
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise ValidationError(unknown[0], f"Unknown field {unknown[0]!r}; "
                                          f"known: {', '.join(sorted(FIELDS))}.")
    personal, events = data.get("personal_data", False), data.get("events")
    if request.mimetype in FORM_TYPES:  # a form's fields are text, `events` may repeat
        personal = str(personal).lower() in ("1", "true", "on", "yes")
        events = ",".join(request.form.getlist("events"))
    cfg = settings()
    try:
        endpoint = hook_endpoints.create(
            db.session, url=data.get("url"), events=events, personal_data=personal,
            description=data.get("description"), allow_http=cfg.webhook_allow_http,
            allow_private=cfg.webhook_allow_private,
        )
    except ValidationError:
        db.session.rollback()
        raise
    db.session.commit()
    return jsonify(hook_endpoints.endpoint_dict(endpoint, secret=True)), 201


@bp.get("/<int:webhook_id>")
def show(webhook_id: int):
    return jsonify(hook_endpoints.endpoint_dict(hook_endpoints.get(db.session, webhook_id)))


@bp.delete("/<int:webhook_id>")
def remove(webhook_id: int):
    hook_endpoints.remove(db.session, webhook_id)
    db.session.commit()
    return "", 204


def _set_enabled(webhook_id: int, enabled: bool):
    endpoint = hook_endpoints.set_enabled(db.session, webhook_id, enabled)
    db.session.commit()
    return jsonify(hook_endpoints.endpoint_dict(endpoint))


@bp.post("/<int:webhook_id>/enable")
def enable(webhook_id: int):
    return _set_enabled(webhook_id, True)


@bp.post("/<int:webhook_id>/disable")
def disable(webhook_id: int):
    return _set_enabled(webhook_id, False)


@bp.post("/<int:webhook_id>/rotate-secret")
def rotate_secret(webhook_id: int):
    hook_endpoints.rotate_secret(db.session, webhook_id)
    db.session.commit()
    endpoint = hook_endpoints.get(db.session, webhook_id)
    return jsonify(hook_endpoints.endpoint_dict(endpoint, secret=True))


@bp.post("/<int:webhook_id>/test")
def test(webhook_id: int):
    delivery_id = hook_endpoints.send_test(db.session, webhook_id)
    db.session.commit()
    return jsonify({"delivery_id": delivery_id}), 202


@bp.get("/<int:webhook_id>/deliveries")
def deliveries(webhook_id: int):
    return jsonify({"deliveries": [
        hook_endpoints.delivery_dict(d, e)
        for d, e in hook_endpoints.recent_deliveries(db.session, webhook_id)]})


@bp.post("/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver")
def redeliver(webhook_id: int, delivery_id: int):
    delivery = hook_endpoints.redeliver(db.session, delivery_id, webhook_id)
    db.session.commit()
    event = db.session.get(hook_endpoints.HookEvent, delivery.event_id)
    return jsonify(hook_endpoints.delivery_dict(delivery, event)), 202


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError):
    return jsonify({"error": "invalid", "field": e.field, "message": e.message}), 400

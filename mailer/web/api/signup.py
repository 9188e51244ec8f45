"""The JSON API under /api/v1: public signup (CORS) and, with bearer tokens, the operator API."""

from __future__ import annotations

from flask import Blueprint, abort, g, jsonify, request

from mailer.errors import ValidationError
from mailer.services import subscriptions as subs
from mailer.web.extensions import settings
from mailer.web.signup import consent_from_request, handle_signup, rate_limited

bp = Blueprint("api", __name__, url_prefix="/api/v1")

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@bp.before_request
def _cors():
    """CORS for the origins in MAILER_CORS_ORIGINS: the site's own signup snippet and beacon."""
    origin = request.headers.get("Origin", "").rstrip("/")
    if origin and origin in settings().cors_origins:
        g.cors_origin = origin
    if request.method == "OPTIONS":
        resp = jsonify({})
        if g.get("cors_origin"):
            resp.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Content-Type"
            resp.headers["Access-Control-Max-Age"] = "86400"
        return resp, 204


def request_data() -> dict:
    """The body as a dict, from JSON or a form; 415 for anything else, 400 for bad JSON."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        data = request.get_json(silent=True)
        if data is None:
            abort(400, "The body is not valid JSON.")
        if not isinstance(data, dict):
            abort(400, "The JSON body must be an object.")
        return data
    if mimetype in FORM_TYPES:
        return request.form
    abort(415)


def _optional_text(data, key: str, max_len: int) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(key, f"{key} must be a string.")
    return subs.check_text(key, value, max_len)


@bp.route("/subscribe", methods=["POST", "OPTIONS"])
@rate_limited
def subscribe():
    data = request_data()
    # The site's snippet may say which form it is and the words it showed next to the box.
    tag = _optional_text(data, "source", 100)
    source = f"api: {tag}" if tag else "api"
    wording = _optional_text(data, "consent", 1000)
    handle_signup(data, source=source, consent=consent_from_request(source, wording))
    return jsonify(
        {"status": "ok", "message": "Thanks! Check your inbox to confirm your subscription."}
    ), 202


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError):
    return jsonify({"error": "invalid", "field": e.field, "message": e.message}), 400

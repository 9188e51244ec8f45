"""The API's public signup, POST /api/v1/subscribe (CORS for the site's own signup form)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify

from mailer.errors import ValidationError
from mailer.services import subscriptions as subs
from mailer.web.api.requests import cors, request_data
from mailer.web.signup import chosen_newsletters, consent_from_request, handle_signup

bp = Blueprint("signup", __name__)
bp.before_request(cors)

# The answer is the same to every signup (new, pending, active or unsubscribed: it reveals
# nothing), so its body is encoded once, not by the JSON provider on every request.
THANKS = json.dumps(
    {"status": "ok", "message": "Thanks! Check your inbox to confirm your subscription."},
    separators=(",", ":"), sort_keys=True,  # as Flask's jsonify writes it
).encode() + b"\n"


def _optional_text(data, key: str, max_len: int) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValidationError(key, f"{key} must be a string.")
    return subs.check_text(key, value, max_len)


@bp.route("/subscribe", methods=["POST", "OPTIONS"])
def subscribe():
    data = request_data()
    # The site's snippet may say which form it is and the words it showed next to the box.
    tag = _optional_text(data, "source", 100)
    source = f"api: {tag}" if tag else "api"
    wording = _optional_text(data, "consent", 1000)
    chosen = chosen_newsletters(data)
    handle_signup(data, source=source, consent=consent_from_request(source, wording),
                  chosen=chosen)
    return Response(THANKS, 202, mimetype="application/json")


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError):
    return jsonify({"error": "invalid", "field": e.field, "message": e.message}), 400

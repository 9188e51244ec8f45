"""What the signup page and the signup API share: parsing, the honeypot, the enqueue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from flask import request
from werkzeug.exceptions import HTTPException

from mailer.db import db
from mailer.errors import ValidationError
from mailer.runtime import runtime
from mailer.services import subscriptions as subs
from mailer.tasks import enqueue, send_confirmation
from mailer.web.extensions import client_ip, limiter

log = logging.getLogger(__name__)

HONEYPOT = "website"
WORDING_MAX = 1000


def consent_wording() -> str:
    name = runtime().settings.list_name
    return (
        f"I want to receive {name} by email. I can unsubscribe at any time "
        "with the link at the bottom of every message."
    )


def consent_from_request(source: str, wording: str | None = None) -> subs.ConsentInfo:
    return subs.ConsentInfo(
        source=source,
        wording=wording or consent_wording(),
        ip=client_ip(),
        user_agent=request.headers.get("User-Agent"),
    )


def _get_list(data: Mapping, key: str) -> list[str]:
    if hasattr(data, "getlist"):
        values = data.getlist(key)
        if len(values) == 1 and "," in values[0]:
            values = values[0].split(",")
        return values
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return value.split(",")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValidationError(key, f"{key} must be a list of section names.")


def _get_str(data: Mapping, key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(key, f"{key} must be a string.")


def address_key() -> str:
    """Rate-limit key for the per-address limit: the address as typed, lower-cased."""
    try:
        data = request.get_json(silent=True) if request.is_json else request.form
    except HTTPException:
        # An oversized or unreadable body: fall back to the IP; the view answers 413/400.
        data = None
    value = data.get("email") if isinstance(data, Mapping) else None
    if isinstance(value, str) and value.strip():
        return "addr:" + value.strip().lower()[:320]
    return "ip:" + client_ip()


def _ip_limit() -> str:
    return runtime().settings.signup_limit_ip


def _address_limit() -> str:
    return runtime().settings.signup_limit_address


# One budget for the page and the API together, per client IP and per address typed: an
# abuser does not get twice the allowance by alternating between the two routes.
signup_limits = [
    limiter.shared_limit(_ip_limit, scope="signup-ip", methods=["POST"]),
    limiter.shared_limit(_address_limit, scope="signup-address", key_func=address_key,
                         methods=["POST"]),
]


def rate_limited(view):
    for decorate in reversed(signup_limits):
        view = decorate(view)
    return view


def handle_signup(data: Mapping, source: str, consent: subs.ConsentInfo) -> None:
    """Validate, record and commit a signup, then enqueue its confirmation mail.

    Raises ValidationError before anything is written. Returns the same way for new,
    pending, active and unsubscribed addresses, so the answer reveals nothing.
    """
    rt = runtime()
    settings = rt.settings
    email = subs.normalize_email(_get_str(data, "email"))
    name = subs.check_text("name", _get_str(data, "name"), subs.NAME_MAX)
    frequency = subs.parse_frequency(_get_str(data, "frequency"))
    sections = subs.parse_sections(_get_list(data, "sections"), settings.section_labels)
    if _get_str(data, HONEYPOT):
        # Bots fill every field; people never see this one. Answer as if it worked.
        log.info("honeypot field filled; signup ignored")
        return
    result = subs.subscribe(
        db.session,
        email=email,
        name=name,
        frequency=frequency,
        sections=sections,
        consent=consent,
        cooldown=timedelta(seconds=settings.resend_cooldown_seconds),
    )
    db.session.commit()
    if result.send_confirmation:
        enqueue(send_confirmation, result.subscriber_id)

"""What the signup page and the signup API share: parsing, the honeypot, the enqueue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta

from flask import request

from mailer.db import db
from mailer.errors import ValidationError
from mailer.runtime import runtime
from mailer.services import subscriptions as subs
from mailer.tasks import enqueue, send_confirmation
from mailer.web.extensions import client_ip

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
    data = request.get_json(silent=True) if request.is_json else request.form
    value = data.get("email") if isinstance(data, Mapping) else None
    if isinstance(value, str) and value.strip():
        return "addr:" + value.strip().lower()[:320]
    return "ip:" + client_ip()


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

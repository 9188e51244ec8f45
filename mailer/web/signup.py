"""What the signup page and the signup API share: parsing, the honeypot, limits, the hand-off."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from flask import current_app, request
from werkzeug.exceptions import HTTPException, TooManyRequests

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import ValidationError
from mailer.models import Newsletter
from mailer.runtime import runtime
from mailer.services import after_commit, newsletters
from mailer.services import subscriptions as subs
from mailer.tasks import notices, send_confirmation, send_confirmations
from mailer.tasks.base import fresh_wire_message
from mailer.web.extensions import client_ip
from mailer.web.signup_gate import Handoff, SignupGate

log = logging.getLogger(__name__)

HONEYPOT = "website"
WORDING_MAX = 1000


def consent_wording(name: str | None = None) -> str:
    """The words next to the box: about one newsletter (`name`, default the list's name), or
    about the ones ticked when the form offers several ("the newsletters I ticked")."""
    name = name or runtime().settings.list_name
    return (
        f"I want to receive {name} by email. I can unsubscribe at any time "
        "with the link at the bottom of every message."
    )


def consent_from_request(source: str, wording: str | None = None) -> subs.ConsentInfo:
    """The consent of this request, with the words the reader saw (a signup's record names
    the newsletters too: subscriptions.subscribe adds them)."""
    return subs.ConsentInfo(
        source=source,
        wording=wording or consent_wording(),
        ip=client_ip(),
        user_agent=request.headers.get("User-Agent"),
    )


OFFERED = "newsletters_offered"  # the page showed checkboxes: one must be ticked


def chosen_newsletters(data: Mapping, only: Newsletter | None = None) -> list[Newsletter] | None:
    """The newsletters a signup asks for: `only` (its own page), else the slugs in
    `newsletters` (a JSON list, a comma-separated string or the repeated form field);
    None: nothing named, the signup defaults. Unknown, hidden and archived slugs are
    refused by name (a hidden one is reached through its own page only)."""
    if only is not None:
        return [only]
    slugs = [s.strip() for s in _get_list(data, "newsletters", "newsletter slugs") if s.strip()]
    if not slugs:
        if _get_str(data, OFFERED):
            raise ValidationError("newsletters", "Please choose at least one newsletter.")
        return None
    found = {n.slug: n for n in newsletters.by_slugs(db.session, slugs)}
    for slug in slugs:
        n = found.get(slug)
        if n is None or not n.takes_readers:
            raise ValidationError("newsletters", f"There is no newsletter {slug[:60]!r} to "
                                                 "subscribe to.")
    return sorted({found[s].id: found[s] for s in slugs}.values(), key=lambda n: n.id)


def _get_list(data: Mapping, key: str, what: str = "section names") -> list[str]:
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
    raise ValidationError(key, f"{key} must be a list of {what}.")


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


def gate() -> SignupGate:
    """This app's signup limits (one budget for the page and the API together, per client
    IP and per address typed: alternating between the two routes gives no more)."""
    app = current_app._get_current_object()
    found = app.extensions.get("mailer.signup_gate")
    if found is None:
        settings = runtime().settings
        found = app.extensions["mailer.signup_gate"] = SignupGate(
            settings.redis_url,
            {"ip": settings.signup_limit_ip, "address": settings.signup_limit_address},
        )
    return found


def _admit(confirmation: tuple[int, datetime] | None) -> None:
    """Count this request against the limits; with Redis, hand over the confirmation in
    the same round trip. Raises 429 (after a rollback) when a limit is full."""
    idents = {"ip": client_ip(), "address": address_key()}
    handoff = None
    if confirmation and runtime().settings.redis_url:
        try:
            queue, message = fresh_wire_message(send_confirmations)
            handoff = Handoff(queue, message, notices.CONFIRMATIONS,
                              notices.confirmation_entry(*confirmation), notices.DRAINING,
                              notices.DRAINING_TTL)
        except Exception as e:  # noqa: BLE001 - no broker: the sweeper sends it
            log.warning("confirmation of subscriber %s left to the sweeper: %s",
                        confirmation[0], e)
    verdict = gate().admit(idents, handoff)
    if not verdict.allowed:
        db.session.rollback()
        raise TooManyRequests(retry_after=verdict.retry_after)


def handle_signup(
    data: Mapping, source: str, consent: subs.ConsentInfo,
    chosen: list[Newsletter] | None = None,
) -> None:
    """Validate, record and commit a signup and hand its confirmation mail to a worker.

    Raises ValidationError before anything is written, TooManyRequests when a limit is full
    (nothing written). Returns the same way for new, pending, active and unsubscribed
    addresses, so the answer reveals nothing. With PostgreSQL and Redis: BEGIN, one
    statement, COMMIT, and one Redis round trip (web.signup_gate).
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
        _admit(None)
        return
    if not settings.redis_url:
        _admit(None)  # embedded: limits first, in this process; nothing to combine them with
    now = utcnow()
    result = subs.subscribe(
        db.session,
        email=email,
        name=name,
        frequency=frequency,
        sections=sections,
        consent=consent,
        cooldown=timedelta(seconds=settings.resend_cooldown_seconds),
        newsletter_ids=[n.id for n in chosen] if chosen else None,
        now=now,
    )
    owed = (result.subscriber_id, now) if result.send_confirmation else None
    if settings.redis_url:
        _admit(owed)  # limits and the hand-off in one round trip, before the COMMIT
        db.session.commit()
        return
    if owed:  # the embedded broker, once the signup is committed
        after_commit.enqueue(db.session, send_confirmation.name, result.subscriber_id)
    db.session.commit()

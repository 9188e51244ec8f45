"""What the signup page and the signup API share: parsing, the honeypot, limits, the hand-off."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta

from flask import current_app, request
from sqlalchemy.engine import Connection
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


def _admit() -> None:
    """Count this request against the limits; 429 when one is full. Before anything is
    written: a refused signup writes nothing."""
    verdict = gate().admit({"ip": client_ip(), "address": address_key()})
    if not verdict.allowed:
        raise TooManyRequests(retry_after=verdict.retry_after)


def _hand_off(subscriber_id: int, requested: datetime) -> None:
    """Give a committed signup's confirmation to the worker, through Redis: its entry on the
    confirmations' list, and a drain task unless one is running. Not taken (no broker,
    Redis down): it is owed in SQL, and the sweeper sends it."""
    try:
        queue, message = fresh_wire_message(send_confirmations)
        handed = gate().hand_off(Handoff(
            queue, message, notices.CONFIRMATIONS,
            notices.confirmation_entry(subscriber_id, requested), notices.DRAINING,
            notices.DRAINING_TTL))
    except Exception as e:  # noqa: BLE001 - no broker: the sweeper sends it
        log.warning("confirmation of subscriber %s left to the sweeper: %s", subscriber_id, e)
        return
    if not handed:
        log.warning("confirmation of subscriber %s left to the sweeper", subscriber_id)


def _in_transaction() -> bool:
    """Whether this request's session began a transaction (without making the session: a
    signup naming no newsletter never needs one)."""
    return db.session.registry.has() and db.session().in_transaction()


@contextmanager
def _statement_alone() -> Iterator[Connection | None]:
    """Where the signup's statement can be a transaction of its own (PostgreSQL, nothing
    read in this request's session yet): a connection in autocommit mode. Else None: the
    statement runs in the session's transaction (SQLite's signup is several statements; a
    signup naming newsletters has read them already)."""
    if db.engine.dialect.name != "postgresql" or _in_transaction():
        yield None
        return
    with db.autocommit() as connection:
        yield connection


def handle_signup(
    data: Mapping, source: str, consent: subs.ConsentInfo,
    chosen: list[Newsletter] | None = None,
) -> None:
    """Validate, record and commit a signup and hand its confirmation mail to a worker.

    Raises ValidationError before anything is written, TooManyRequests when a limit is full
    (nothing written). Returns the same way for new, pending, active and unsubscribed
    addresses, so the answer reveals nothing. With PostgreSQL and Redis: one Redis round
    trip for the limits, the one statement in autocommit mode (one database round trip,
    committed when it returns), then, when a confirmation is owed, a second Redis round
    trip hands it to the worker (web.signup_gate).
    """
    rt = runtime()
    settings = rt.settings
    email = subs.normalize_email(_get_str(data, "email"))
    name = subs.check_text("name", _get_str(data, "name"), subs.NAME_MAX)
    frequency = subs.parse_frequency(_get_str(data, "frequency"))
    sections = subs.parse_sections(_get_list(data, "sections"), settings.section_labels)
    _admit()
    if _get_str(data, HONEYPOT):
        # Bots fill every field; people never see this one. Answer as if it worked.
        log.info("honeypot field filled; signup ignored")
        return
    now = utcnow()
    with _statement_alone() as at_once:
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
            at_once=at_once,
        )
    owed = result.subscriber_id if result.send_confirmation else None
    if owed and not settings.redis_url:  # the embedded broker, once the signup is committed
        after_commit.enqueue(db.session, send_confirmation.name, owed)
    if _in_transaction():  # the signup's, or (autocommit) the webhooks' hand-out
        db.session.commit()
    if owed and settings.redis_url:
        _hand_off(owed, now)

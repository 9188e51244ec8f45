"""Signup, double opt-in, unsubscribe, preferences, export and erasure of readers."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from mailer.clock import utcnow
from mailer.db import DriverStatement
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import (
    BounceEvent,
    ConsentRecord,
    Delivery,
    Frequency,
    HookDelivery,
    HookEndpoint,
    HookEvent,
    HookStatus,
    Newsletter,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    Suppression,
    new_uid,
    sections_key,
    sections_list,
)
from mailer.services import hooks
from mailer.services import newsletters as nl

NAME_MAX = 100
EMAIL_MAX = 254  # RFC 5321 path limit, minus the angle brackets
LOCAL_MAX = 64
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: none belongs in a
# name or an address, and CR/LF in particular would let a value escape into mail headers.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Which statuses a confirmation click may turn into `active`. Complained readers asked mailbox
# providers to stop us; only a deliberate new signup made after the complaint, then confirmed,
# brings them back (a confirmation link from before the complaint opens nothing), and we do
# not mail them a confirmation unprompted.
CONFIRMABLE = (
    SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED,
    SubscriberStatus.COMPLAINED,
)


def _among(column, values):
    """`column` IN (values) as fixed parameters: an IN of a list is an expanding parameter,
    which SQLAlchemy rewrites at every execution (a tenth of a confirmation claim's CPU)."""
    return or_(*(column == value for value in values))


# In SQL: a confirmable status, and for a complained reader a request made since.
_MAY_CONFIRM = _among(Subscriber.status, CONFIRMABLE) & (
    (Subscriber.status != SubscriberStatus.COMPLAINED)
    | Subscriber.complained_at.is_(None)
    | (Subscriber.confirm_requested_at > Subscriber.complained_at)
)
# An active reader who asked for another newsletter: their pending subscription waits for
# a confirmation like a new reader's.
_ASKED_FOR_MORE = (Subscriber.status == SubscriberStatus.ACTIVE) & exists().where(
    Subscription.subscriber_id == Subscriber.id,
    Subscription.status == SubscriptionStatus.PENDING,
)
UNSUBSCRIBABLE = (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
OPEN_SUBSCRIPTION = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
# Which statuses a signup answers by mail: a confirmation, or for an active reader a short
# "you are already subscribed" with the preferences link (rate-limited the same way).
ANSWERED_BY_MAIL = (*CONFIRMABLE, SubscriberStatus.ACTIVE)

Hasher = Callable[[str], str]


@dataclass(frozen=True)
class ConsentInfo:
    """Where a consent came from, recorded with the words the reader saw."""

    source: str
    wording: str
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int | None
    send_confirmation: bool


def confirmation_owed(sub: Subscriber) -> bool:
    """Whether nothing was sent yet for the reader's latest request (_CONFIRMATION_OWED in
    Python)."""
    return sub.confirm_sent_at is None or (
        sub.confirm_requested_at is not None and sub.confirm_sent_at < sub.confirm_requested_at
    )


def may_confirm(sub: Subscriber) -> bool:
    """Whether a confirmation would make this reader active now (_MAY_CONFIRM in Python)."""
    if sub.status not in CONFIRMABLE:
        return False
    if sub.status != SubscriberStatus.COMPLAINED:
        return True
    asked, complained = sub.confirm_requested_at, sub.complained_at
    return asked is not None and (complained is None or asked > complained)


def check_text(name: str, value: str | None, max_len: int) -> str | None:
    """Strip a free-text field; refuse control characters and over-long values."""
    if value is None:
        return None
    if _CONTROL.search(value):
        raise ValidationError(name, f"The {name} contains line breaks or control characters.")
    value = unicodedata.normalize("NFC", value).strip()
    if len(value) > max_len:
        raise ValidationError(name, f"The {name} is longer than {max_len} characters.")
    return value or None


def normalize_email(raw: str | None) -> str:
    """A canonical, ASCII, lower-case address; IDN domains in their xn-- form."""
    if raw is None or not raw.strip():
        raise ValidationError("email", "Please enter your email address.")
    if _CONTROL.search(raw):
        raise ValidationError("email", "The email address contains line breaks or control characters.")
    raw = raw.strip()
    if len(raw) > EMAIL_MAX:
        raise ValidationError("email", f"The email address is longer than {EMAIL_MAX} characters.")
    return _plain_address(raw) or _validated_address(raw)


# An address of the common form: letters, digits and _ + - in dot-separated words before the
# @, host names of letters, digits and inner hyphens after it, under a top-level domain of
# letters, all ASCII. email-validator accepts each as it is (but for case: we lower it),
# unless a label has two hyphens after its first two characters (Punycode, or what it
# refuses as such) or the domain is one of its special-use names: those, and every other
# form, are its to check (a test holds the two to the same answers).
_PLAIN_ADDRESS = re.compile(
    r"[a-z0-9_+-]+(?:\.[a-z0-9_+-]+)*@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
    re.ASCII,
)


def _plain_address(raw: str) -> str | None:
    """`raw` lower-cased when it is of the common form, which email-validator would accept
    unchanged; else None (without the cost of email-validator's checks: about a tenth of
    a signup's CPU in the web process)."""
    if not raw.isascii():
        return None
    address = raw.lower()
    if not _PLAIN_ADDRESS.fullmatch(address):
        return None
    local, _, domain = address.partition("@")
    if len(local) > LOCAL_MAX or any(label[2:4] == "--" for label in domain.split(".")):
        return None
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    if any(domain == name or domain.endswith("." + name) for name in SPECIAL_USE_DOMAIN_NAMES):
        return None
    return address


def _validated_address(raw: str) -> str:
    """normalize_email's answer through email-validator: every form it accepts."""
    # Imported here: only signups, imports and address changes check an address, never a
    # process that only sends (email-validator brings idna's tables with it).
    from email_validator import EmailNotValidError, validate_email

    try:
        # SMTPUTF8 (a non-ASCII local part) is refused: many receiving servers cannot take it.
        info = validate_email(raw, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as e:
        raise ValidationError("email", f"That does not look like an email address: {e}") from None
    address = info.ascii_email or info.normalized
    if len(address.rpartition("@")[0]) > LOCAL_MAX:
        # RFC 5321 4.5.3.1.1; email-validator stopped enforcing it, many servers still do.
        raise ValidationError(
            "email", f"The part before the @ is longer than {LOCAL_MAX} characters."
        )
    return address.lower()


def parse_frequency(raw: str | None) -> Frequency:
    if not raw:
        return Frequency.WEEKLY
    try:
        return Frequency(raw.strip().lower())
    except ValueError:
        raise ValidationError("frequency", "Frequency must be weekly or daily.") from None


def parse_sections(raw, known: Iterable[str]) -> str:
    """A canonical sections key from a list or a comma-separated string; '' = every section.

    The one rule for readers, issues and schedules: unknown names are refused, and every
    section ticked means the same as none (no filter).
    """
    if raw is None:
        return ""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValidationError("sections", "Sections must be a list of section names.")
    known = set(known)
    key = sections_key(items)
    chosen = set(sections_list(key))
    unknown = sorted(chosen - known)
    if unknown:
        offered = f"known: {', '.join(sorted(known))}" if known else "no sections are set up"
        raise ValidationError("sections", f"Unknown section {unknown[0][:50]!r}; {offered}.")
    return "" if chosen == known else key


def _event(session: Session, subscriber_id: int, kind: str, detail: str | None = None, now=None):
    session.add(SubscriberEvent(subscriber_id=subscriber_id, kind=kind, detail=detail, at=now or utcnow()))


def _consent(session: Session, subscriber_id: int, kind: str, consent: ConsentInfo, now):
    session.add(
        ConsentRecord(
            subscriber_id=subscriber_id,
            kind=kind,
            at=now,
            ip=consent.ip,
            user_agent=(consent.user_agent or "")[:500] or None,
            source=consent.source[:200],
            wording=consent.wording,
        )
    )


def by_uid(session: Session, uid: str) -> Subscriber:
    sub = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if sub is None:
        raise NotFound("This link belongs to no current subscription.")
    return sub


def by_email(session: Session, email: str) -> Subscriber | None:
    return session.scalar(select(Subscriber).where(Subscriber.email == email))


def subscribe(
    session: Session,
    *,
    email: str,
    name: str | None,
    frequency: Frequency,
    sections: str,
    consent: ConsentInfo,
    cooldown: timedelta,
    newsletter_ids: Iterable[int] | None = None,
    now: datetime | None = None,
    at_once: Connection | None = None,
) -> SignupResult:
    """Record a signup; the caller answers the same way whatever the address's state was.

    The reader asks for `newsletter_ids` (default: the signup defaults): each gets a pending
    subscription with this frequency and sections, unless the reader already has one (an
    active one stays as it is; one they left becomes pending again, keeping its choices),
    so that one confirmation activates them all. The consent record names them, after the
    words the reader saw (`newsletters_named`), the defaults too when the reader chose none.

    A new address becomes a pending reader with a consent record and a history line; a
    pending, unsubscribed, bounced or complained one asks for another confirmation, at most
    once per cooldown (what the form said this time is not applied: an unconfirmed request
    changes nothing stored; a complained reader stays complained until they confirm); an
    active one is owed a "you are already subscribed" mail, on the same cooldown. On
    PostgreSQL all of it is one statement (the signup form sits on every article page: it
    must be cheap). With `at_once` (a PostgreSQL connection in autocommit mode,
    `db.autocommit`) that statement runs there, a transaction of its own, committed when
    this returns; `session` then only carries the webhook deliveries' hand-out, for the
    caller's commit.
    """
    now = now or utcnow()
    if newsletter_ids is not None:
        newsletter_ids = sorted(set(newsletter_ids))
    if at_once is not None or session.get_bind().dialect.name == "postgresql":
        return _subscribe_in_one_statement(
            session, at_once, email, name, frequency, sections, consent, now - cooldown, now,
            newsletter_ids,
        )
    if newsletter_ids is None:
        newsletter_ids = [n.id for n in nl.signup_defaults(session)]
    consent = newsletters_named(consent, session.scalars(
        select(Newsletter.name).where(Newsletter.id.in_(newsletter_ids)).order_by(Newsletter.id)
    ))
    sub = by_email(session, email)
    if sub is None:
        sub = Subscriber(
            email=email,
            name=name,
            frequency=frequency,
            sections=sections,
            source=consent.source[:200],
            status=SubscriberStatus.PENDING,
            created_at=now,
            confirm_requested_at=now,
        )
        try:
            # A savepoint, so a concurrent signup of the same address loses only this insert.
            with session.begin_nested():
                session.add(sub)
                session.flush()
        except IntegrityError:
            sub = by_email(session, email)
            if sub is None:  # pragma: no cover - the row that won the race was deleted again
                raise
        else:
            _ask_for(session, sub.id, newsletter_ids, frequency, sections, now)
            _consent(session, sub.id, "signup", consent, now)
            _event(session, sub.id, "signup", consent.source, now)
            hooks.emit(session, "subscriber.created", hooks.subscriber_data(sub),
                       subscriber_id=sub.id, now=now)
            return SignupResult(sub.id, True)

    if sub.status not in ANSWERED_BY_MAIL:
        return SignupResult(sub.id, False)
    last = sub.confirm_requested_at
    if last is not None and now - last < cooldown:
        return SignupResult(sub.id, False)
    sub.confirm_requested_at = now
    _ask_for(session, sub.id, newsletter_ids, frequency, sections, now)
    _consent(session, sub.id, "signup", consent, now)
    _event(session, sub.id, "signup-repeated", consent.source, now)
    return SignupResult(sub.id, True)


NAMED = "\nNewsletters: "  # how a consent record's wording names the newsletters asked for


def newsletters_named(consent: ConsentInfo, names: Iterable[str]) -> ConsentInfo:
    """The consent with the newsletters it is about named after the words the reader saw
    (the statement of _signup_statement does the same in SQL)."""
    names = list(names)
    if not names:
        return consent
    return replace(consent, wording=consent.wording + NAMED + ", ".join(names))


def _ask_for(session: Session, subscriber_id: int, newsletter_ids, frequency, sections, now):
    """The pending subscriptions a signup asks for (the SQL of the PostgreSQL statement's
    `asked_for` step, for the embedded database)."""
    have = {
        s.newsletter_id: s
        for s in session.scalars(
            select(Subscription).where(Subscription.subscriber_id == subscriber_id)
        )
    }
    for newsletter_id in newsletter_ids:
        found = have.get(newsletter_id)
        if found is None:
            session.add(Subscription(
                subscriber_id=subscriber_id, newsletter_id=newsletter_id,
                status=SubscriptionStatus.PENDING, frequency=frequency, sections=sections,
                created_at=now,
            ))
        elif found.status == SubscriptionStatus.UNSUBSCRIBED:
            found.status = SubscriptionStatus.PENDING
    session.flush()


def _signup_statement(hooked: bool = True):
    """INSERT the new reader, or else ask an existing one for another confirmation, then
    record the consent and the history line, and the subscriber.created event with its
    webhook deliveries when an endpoint wants it: one round trip (PostgreSQL's
    data-modifying CTEs). Built once; parameter names are not column names (an UPDATE would
    take those as values to SET). Its row: the reader's id when a confirmation is owed, the
    ids of the webhook deliveries to hand out, and whether an endpoint wants the event.

    Without `hooked`, the statement has no webhook steps (their plan's parts cost the
    server about as much as the foreign-key checks on every signup) and writes nothing at
    all when an endpoint wants the event: its row then says so, and the caller runs the
    full statement. Both decide in the same snapshot as the rest of the statement, so a
    signup leaves the same rows either way (the event goes to every endpoint committed
    before the statement that writes the reader)."""
    from sqlalchemy import (
        BigInteger,
        String,
        Text,
        bindparam,
        cast,
        literal,
        literal_column,
        null,
        true,
        union_all,
    )
    from sqlalchemy.dialects.postgresql import ARRAY, JSONB, aggregate_order_by, array, insert

    now = bindparam("s_now", type_=Subscriber.__table__.c.created_at.type)
    cutoff = bindparam("s_cutoff", type_=Subscriber.__table__.c.created_at.type)
    endpoints = HookEndpoint.__table__
    wanted = hooks.wants("subscriber.created")
    hook_wanted = select(endpoints.c.id).where(wanted).exists()
    columns = {
        "uid": bindparam("s_uid"),
        "email": bindparam("s_email"),
        "name": bindparam("s_name"),
        "status": literal_column(f"'{SubscriberStatus.PENDING.value}'"),
        "frequency": bindparam("s_frequency", type_=Subscriber.__table__.c.frequency.type),
        "sections": bindparam("s_sections"),
        "source": bindparam("s_source"),
        "created_at": now,
        "updated_at": now,
        "confirm_requested_at": now,
        # Every NOT NULL column, listed: the server default alone is not enough for a
        # statement that names its columns (a column left out here broke every signup).
        "bounce_score": literal_column("0"),
    }
    if hooked:
        new = insert(Subscriber.__table__).values(**columns)
    else:  # nothing written when an endpoint wants the event: the full statement's work
        new = insert(Subscriber.__table__).from_select(
            list(columns), select(*columns.values()).where(~hook_wanted))
    new = (
        new.on_conflict_do_nothing(index_elements=["email"])
        .returning(Subscriber.__table__.c.id, literal_column("'signup'").label("kind"))
        .cte("new")
    )
    # (Same snapshot as `new`: a row it inserted is not seen here, so a new reader is never
    # also "repeated".)
    again = (
        update(Subscriber.__table__)
        .where(
            Subscriber.__table__.c.email == bindparam("s_email"),
            Subscriber.__table__.c.status.in_(
                [literal_column(f"'{s.value}'") for s in ANSWERED_BY_MAIL]
            ),
            Subscriber.__table__.c.confirm_requested_at.is_(None)
            | (Subscriber.__table__.c.confirm_requested_at <= cutoff),
            *(() if hooked else (~hook_wanted,)),
        )
        .values(confirm_requested_at=now, updated_at=now)
        .returning(Subscriber.__table__.c.id, literal_column("'signup-repeated'").label("kind"))
        .cte("again")
    )
    asked = union_all(select(new.c.id, new.c.kind), select(again.c.id, again.c.kind)).cte("asked")
    # The pending subscription to each newsletter asked for; one the reader left becomes
    # pending again (an active one stays as it is).
    # Those named (s_newsletters), else the signup defaults (newsletters.signup_defaults in
    # SQL: saves a round trip).
    # One expression, read only when none is named: a union of the three cases cost the
    # server a tenth of the statement's CPU, most of it in starting its plan's parts.
    subscriptions, newsletters = Subscription.__table__, Newsletter.__table__
    ids = ARRAY(BigInteger)
    defaults = select(func.coalesce(
        func.array_agg(newsletters.c.id, type_=ids).filter(
            newsletters.c.signup_default.is_(True) & newsletters.c.archived_at.is_(None)),
        # (none at all: no newsletter, not a NULL one)
        func.array_remove(array([func.min(newsletters.c.id)]), null(), type_=ids),
    )).scalar_subquery()
    chosen = select(
        func.unnest(func.coalesce(cast(bindparam("s_newsletters"), ids), defaults)).label("nid")
    ).cte("chosen")
    pending = literal_column(f"'{SubscriptionStatus.PENDING.value}'")
    asked_for = insert(subscriptions).from_select(
        ["subscriber_id", "newsletter_id", "status", "frequency", "sections", "created_at"],
        select(
            asked.c.id, chosen.c.nid, pending,
            bindparam("s_frequency", type_=subscriptions.c.frequency.type),
            bindparam("s_sections"), now,
        ).select_from(asked.join(chosen, true())),
    )
    asked_for = asked_for.on_conflict_do_update(
        index_elements=["subscriber_id", "newsletter_id"],
        set_={"status": pending},
        where=subscriptions.c.status == literal_column(
            f"'{SubscriptionStatus.UNSUBSCRIBED.value}'"
        ),
    ).cte("asked_for")
    # The words the reader saw, then the newsletters asked for by name (newsletters_named).
    names = (
        select(func.string_agg(newsletters.c.name,
                               aggregate_order_by(literal(", ", Text), newsletters.c.id)))
        .select_from(chosen.join(newsletters, newsletters.c.id == chosen.c.nid))
        .scalar_subquery()
    )
    wording = bindparam("s_wording", type_=Text) + func.coalesce(
        literal(NAMED, Text) + names, literal("", Text)
    )
    consent = (
        insert(ConsentRecord.__table__)
        .from_select(
            ["subscriber_id", "kind", "at", "ip", "user_agent", "source", "wording"],
            select(
                asked.c.id,
                literal_column("'signup'"),
                now,
                bindparam("s_ip"),
                bindparam("s_user_agent"),
                bindparam("s_source"),
                wording,
            ),
        )
        .cte("consent")
    )
    event = (
        insert(SubscriberEvent.__table__)
        .from_select(
            ["subscriber_id", "at", "kind", "detail"],
            select(asked.c.id, now, asked.c.kind, bindparam("s_source")),
        )
        .cte("event")
    )
    if not hooked:
        # One row whatever was written: the reader's id (or none) and whether an endpoint
        # wants the event (then nothing was written).
        return select(
            select(asked.c.id).scalar_subquery(), null(), hook_wanted
        ).add_cte(asked_for, consent, event)
    # The event of a new reader: its payload is built in Python, the id filled in here.
    hook_event = (
        insert(HookEvent.__table__)
        .from_select(
            ["uid", "type", "subscriber_id", "payload", "created_at"],
            select(
                bindparam("h_uid"),
                literal_column("'subscriber.created'"),
                new.c.id,
                cast(
                    func.jsonb_set(cast(bindparam("h_payload"), JSONB),
                                   literal_column("'{subscriber,id}'"), func.to_jsonb(new.c.id)),
                    String,
                ),
                now,
            ).where(hook_wanted),
        )
        .returning(HookEvent.__table__.c.id)
        .cte("hook_event")
    )
    hook_deliveries = (
        insert(HookDelivery.__table__)
        .from_select(
            ["event_id", "endpoint_id", "status", "attempts", "next_attempt_at",
             "handed_out_at", "created_at"],
            select(hook_event.c.id, endpoints.c.id,
                   literal_column(f"'{HookStatus.PENDING.value}'"), literal_column("0"),
                   now, now, now)
            .select_from(hook_event.join(endpoints, wanted)),
        )
        .returning(HookDelivery.__table__.c.id)
        .cte("hook_deliveries")
    )
    hook_ids = select(func.array_agg(hook_deliveries.c.id)).scalar_subquery()
    return select(asked.c.id, hook_ids, hook_wanted).add_cte(
        asked_for, consent, event, hook_event, hook_deliveries
    )


# Whether the last signup of this process saw an endpoint that wants subscriber.created:
# which statement the next one tries first. A wrong guess costs a round trip, never an
# event (_signup_statement).
_hooked = False


def _subscribe_in_one_statement(
    session: Session, at_once: Connection | None, email, name, frequency, sections,
    consent: ConsentInfo, cutoff, now, newsletter_ids: list[int] | None,
) -> SignupResult:
    global _hooked
    source = consent.source[:200]
    params = {
        "s_uid": new_uid(),
        "s_email": email,
        "s_name": name,
        "s_frequency": frequency,
        "s_sections": sections,
        "s_source": source,
        "s_now": now,
        "s_cutoff": cutoff,
        "s_newsletters": newsletter_ids,
        "s_ip": consent.ip,
        "s_user_agent": (consent.user_agent or "")[:500] or None,
        "s_wording": consent.wording,
    }
    # Straight on the driver, through the session's connection and in its transaction (or
    # on `at_once`, a transaction of its own): the statement touches no ORM object, and the
    # ORM's and then Core's execute paths around it cost as much CPU as the driver's own
    # (db.DriverStatement).
    connection = session.connection() if at_once is None else at_once
    if not _hooked:
        sub_id, _, hooked = _signup(False).first(connection, params)
        if not hooked:
            return SignupResult(sub_id, sub_id is not None)
        _hooked = True  # it wrote nothing: the full statement, from now on
    reader = {"id": 0, "status": str(SubscriberStatus.PENDING), "email": email, "name": name,
              "frequency": str(frequency), "sections": sections_list(sections),
              "source": source}
    row = _signup(True).first(connection, {
        **params, "h_uid": hooks.new_msg_id(), "h_payload": json.dumps({"subscriber": reader}),
    })
    sub_id, hook_deliveries, hooked = row if row is not None else (None, None, True)
    if not hooked:  # the last endpoint went: the short statement, from the next signup on
        _hooked = False
    for delivery_id in hook_deliveries or ():
        hooks.hand_out(session, delivery_id)
    return SignupResult(sub_id, sub_id is not None)


@cache
def _signup(hooked: bool) -> DriverStatement:
    """The signup's statement, with or without its webhook steps, built once per process."""
    return DriverStatement(_signup_statement(hooked))


class LinkUsed(Conflict):
    """A confirmation link that was used, or superseded by the reader's later choice."""


def _link_is_current(issued: datetime, legacy_email: str | None):
    """The conditions under which a confirmation link issued at `issued` still opens.

    A link answers one request: a newer request (superseding it), a confirmation (using
    it), an unsubscribe or a bounce after it (the reader's later choice) all close it.
    Links of the current form carry the request's time exactly; links mailed by v0.1.0
    carry the time they were made (after their request) and the address.
    """
    conditions = [
        _MAY_CONFIRM | _ASKED_FOR_MORE,
        Subscriber.complained_at.is_(None) | (Subscriber.complained_at < issued),
        Subscriber.confirmed_at.is_(None) | (Subscriber.confirmed_at < issued),
        Subscriber.unsubscribed_at.is_(None) | (Subscriber.unsubscribed_at < issued),
        Subscriber.bounced_at.is_(None) | (Subscriber.bounced_at < issued),
    ]
    if legacy_email is None:
        conditions.append(Subscriber.confirm_requested_at == issued)
    else:
        conditions += [
            Subscriber.email == legacy_email,
            # (those times are whole seconds: the request may come up to a second later)
            Subscriber.confirm_requested_at.is_(None)
            | (Subscriber.confirm_requested_at < issued + timedelta(seconds=1)),
        ]
    return conditions


def confirmation_target(
    session: Session, uid: str, issued: datetime, legacy_email: str | None = None
) -> Subscriber:
    """The reader a confirmation link would activate; NotFound, or LinkUsed if it opens nothing."""
    sub = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if sub is None or (legacy_email is not None and sub.email != legacy_email):
        raise NotFound("This confirmation link belongs to no current subscription.")
    current = session.scalar(
        select(Subscriber.id).where(Subscriber.id == sub.id, *_link_is_current(issued, legacy_email))
    )
    if current is None:
        raise LinkUsed("This link has been used.")
    return sub


def confirm(
    session: Session,
    uid: str,
    issued: datetime,
    consent: ConsentInfo | None = None,
    hasher: Hasher | None = None,
    *,
    legacy_email: str | None = None,
    now=None,
) -> Subscriber:
    """Activate the subscription a confirmation link names, once.

    One conditional UPDATE: a link used, superseded by a newer request, or older than an
    unsubscribe or a bounce changes nothing and raises LinkUsed; an unknown reader NotFound.
    """
    now = now or utcnow()
    result = session.execute(
        update(Subscriber)
        .where(Subscriber.uid == uid, *_link_is_current(issued, legacy_email))
        # A confirmed address starts a new story: no bounce score carried over.
        .values(
            status=SubscriberStatus.ACTIVE, confirmed_at=now, unsubscribed_at=None,
            bounce_score=0,
        )
        .execution_options(synchronize_session=False)
    )
    sub = session.scalar(select(Subscriber).where(Subscriber.uid == uid))
    if sub is None or (legacy_email is not None and sub.email != legacy_email):
        raise NotFound("This confirmation link belongs to no current subscription.")
    session.refresh(sub)
    if result.rowcount == 0:
        raise LinkUsed("This link has been used.")
    _activate_pending(session, sub.id, now)
    _activated(session, sub, consent, hasher, now)
    return sub


def _activate_pending(session: Session, subscriber_id: int, now) -> None:
    """Every subscription the reader asked for and has not had yet starts now."""
    session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id == subscriber_id,
            Subscription.status == SubscriptionStatus.PENDING,
        )
        .values(status=SubscriptionStatus.ACTIVE, confirmed_at=now, unsubscribed_at=None)
        .execution_options(synchronize_session=False)
    )


def has_pending(session: Session, subscriber_id: int) -> bool:
    """Whether the reader asked for a newsletter they have not confirmed yet."""
    return session.scalar(
        select(Subscription.id).where(
            Subscription.subscriber_id == subscriber_id,
            Subscription.status == SubscriptionStatus.PENDING,
        ).limit(1)
    ) is not None


def resubscribe(
    session: Session, sub: Subscriber, consent: ConsentInfo, newsletter_id: int | None = None,
    now=None,
) -> None:
    """A reader subscribes again, or for the first time, to `newsletter_id` (default the
    first), from their preferences page (the link came by mail to this address, so it proves
    they own it): active at once, with a consent record naming the newsletter. A hidden or
    archived newsletter is refused (ValidationError)."""
    now = now or utcnow()
    if newsletter_id is None:
        newsletter_id = nl.first(session).id
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is None or not newsletter.takes_readers:
        # Only what the public forms offer may start again without an invitation.
        raise ValidationError("newsletter", "This newsletter takes no new readers.")
    consent = newsletters_named(consent, [newsletter.name])
    if sub.status == SubscriberStatus.ACTIVE:
        if _start(session, sub.id, newsletter_id, now):
            _consent(session, sub.id, "confirm", consent, now)
            _event(session, sub.id, "subscribed", newsletter.slug, now)
        return
    result = session.execute(
        update(Subscriber)
        .where(Subscriber.id == sub.id, _MAY_CONFIRM)
        .values(
            status=SubscriberStatus.ACTIVE, confirmed_at=now, unsubscribed_at=None,
            bounce_score=0,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(sub)
    if result.rowcount == 0:
        if sub.status == SubscriberStatus.ACTIVE:
            return
        raise Conflict("This subscription cannot be confirmed any more. Please sign up again.")
    _start(session, sub.id, newsletter_id, now)
    _activated(session, sub, consent, None, now)


def _slug(session: Session, newsletter_id: int) -> str:
    return session.scalar(select(Newsletter.slug).where(Newsletter.id == newsletter_id)) or "?"


def _start(session: Session, subscriber_id: int, newsletter_id: int, now) -> bool:
    """The reader's subscription to one newsletter is active (made if missing); False when
    it already was."""
    found = session.scalar(select(Subscription).where(
        Subscription.subscriber_id == subscriber_id, Subscription.newsletter_id == newsletter_id
    ))
    if found is None:
        session.add(Subscription(
            subscriber_id=subscriber_id, newsletter_id=newsletter_id,
            status=SubscriptionStatus.ACTIVE, created_at=now, confirmed_at=now,
        ))
    elif found.status == SubscriptionStatus.ACTIVE:
        return False
    else:
        found.status, found.confirmed_at, found.unsubscribed_at = (
            SubscriptionStatus.ACTIVE, now, None
        )
    session.flush()
    return True


def _activated(session: Session, sub: Subscriber, consent, hasher, now) -> None:
    if consent is not None:
        _consent(session, sub.id, "confirm", consent, now)
    if hasher is not None:
        # A reader who confirms asked for mail again: an earlier erasure or complaint no
        # longer applies.
        session.execute(
            delete(Suppression).where(
                Suppression.email_hash == hasher(sub.email),
                Suppression.reason.in_(("erased", "complained")),
            )
        )
    _event(session, sub.id, "confirmed", None, now)
    hooks.emit(session, "subscriber.confirmed", hooks.subscriber_data(sub),
               subscriber_id=sub.id, now=now)


# A confirmation mail is owed when none was sent since the reader last asked for one.
_CONFIRMATION_OWED = (Subscriber.confirm_sent_at.is_(None)) | (
    Subscriber.confirm_sent_at < Subscriber.confirm_requested_at
)


@dataclass(frozen=True)
class Confirmation:
    """A confirmation mail claimed (take_confirmation): what it says and to whom."""

    email: str
    uid: str
    requested: datetime  # the request it answers (its link is signed for it)
    # An active reader with nothing left to confirm gets "you are already subscribed".
    already_subscribed: bool
    # (name, description) of what the mail lists, oldest newsletter first: the newsletters
    # asked for and not confirmed; when none is pending (a bounced reader whose
    # subscriptions stayed as they were), the ones confirming brings back.
    newsletters: list[tuple[str, str | None]]
    look: tuple | None  # the site look's looks.LOOK_COLUMNS (the first newsletter's)


def _confirmation_claim():
    """Take the mail owed for the reader's request if it is `c_since` or newer: a
    conditional UPDATE, so of two copies of the sending task (or a task and the sweeper's)
    only one passes. The claim stores the request time it serves, not this host's clock, so
    clock skew between hosts cannot re-open it. Parameter names are not column names."""
    return (
        update(Subscriber)
        .where(
            Subscriber.id == bindparam("c_id"),
            Subscriber.confirm_requested_at >= bindparam("c_since"),
            _CONFIRMATION_OWED,
            _MAY_CONFIRM | (Subscriber.status == SubscriberStatus.ACTIVE),
        )
        # updated_at given, not left to the model's default computed in Python: the
        # statement then runs as it is compiled (db.DriverStatement).
        .values(confirm_sent_at=Subscriber.confirm_requested_at,
                updated_at=bindparam("c_now", type_=Subscriber.__table__.c.updated_at.type))
        .returning(Subscriber.id, Subscriber.email, Subscriber.uid, Subscriber.status,
                   Subscriber.confirm_requested_at)
    )


def _confirmation_details(claimed):
    """What the mail needs, one row per open subscription of the `claimed` reader (at least
    one row), each with the site look's columns."""
    from mailer.services.looks import LOOK_COLUMNS

    opened = (
        select(Subscription.subscriber_id, Subscription.newsletter_id,
               Subscription.status.label("subscription_status"),
               Newsletter.name.label("newsletter_name"), Newsletter.description)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(_among(Subscription.status, OPEN_SUBSCRIPTION))
        .subquery("opened")
    )
    site = select(*LOOK_COLUMNS).order_by(Newsletter.id).limit(1).subquery("site")
    return (
        select(claimed.c.email, claimed.c.uid, claimed.c.status, claimed.c.confirm_requested_at,
               opened.c.subscription_status, opened.c.newsletter_name, opened.c.description,
               *site.c)
        .select_from(
            claimed.outerjoin(opened, opened.c.subscriber_id == claimed.c.id)
            .outerjoin(site, true())
        )
        .order_by(opened.c.newsletter_id)
    )


# `since` for a claim of whatever request is owed.
_ANY_REQUEST = datetime(1970, 1, 1, tzinfo=UTC)


# PostgreSQL: the transaction of a claim commits without waiting for its WAL to reach the
# disk (asynchronous commit, for that transaction alone: set_config's `is_local`). The claim
# is all it writes, and losing it in a crash of the database server only makes the mail owed
# again: the sweeper sends it once more, with the same link (it is signed for the request,
# not for the claim). Every commit that does wait, a signup's included, writes the claims
# committed before it to the disk too, and the WAL writer does within a fraction of a second
# otherwise; what a crash can lose is that last fraction of a second of claims, of mails
# already sent. In exchange a claim costs about half the server's CPU it cost.
# A condition that always holds, evaluated for a row the claim takes; the row is claimed
# only if every condition is evaluated, so whenever something is written, this has run.
_COMMIT_WITHOUT_WAITING = func.set_config(
    literal("synchronous_commit", Text), literal("off", Text), true()
).is_not(None)


@cache
def _take_statements(dialect: str) -> tuple:
    """(the claim, or None where the details' statement claims too; the details: on
    PostgreSQL run on the driver (db.DriverStatement), a Core statement elsewhere). Built
    once per dialect."""
    claim = _confirmation_claim()
    if dialect == "postgresql":
        claim = claim.where(_COMMIT_WITHOUT_WAITING)
        return None, DriverStatement(_confirmation_details(claim.cte("claimed")))
    reader = (select(Subscriber.id, Subscriber.email, Subscriber.uid, Subscriber.status,
                     Subscriber.confirm_requested_at)
              .where(Subscriber.id == bindparam("c_id")).subquery("claimed"))
    return claim, _confirmation_details(reader)


def _take_params(subscriber_id: int, since: datetime | None) -> dict:
    return {"c_id": subscriber_id, "c_since": since or _ANY_REQUEST, "c_now": utcnow()}


def take_confirmation(
    session: Session, subscriber_id: int, since: datetime | None
) -> Confirmation | None:
    """Claim the confirmation mail owed for the reader's request made at `since` or later
    (None: whichever is owed) and read what the mail says; None if nothing is owed (or the
    request is not committed yet). PostgreSQL: one statement (a data-modifying CTE)."""
    claim, details = _take_statements(session.bind.dialect.name)
    # Through the session's connection: the statements touch no ORM object.
    return _claimed(session.connection(), claim, details, _take_params(subscriber_id, since))


def take_confirmation_at_once(
    connection: Connection, subscriber_id: int, since: datetime | None
) -> Confirmation | None:
    """take_confirmation as one statement that is its own transaction, on a PostgreSQL
    `connection` in autocommit mode: no BEGIN and no COMMIT of its own, two round trips
    fewer per confirmation. The claim is committed when this returns, as take_confirmation's
    is once its transaction commits. None also when nothing was claimed for any other reason
    (take_confirmation in a transaction tells them apart)."""
    if connection.dialect.name != "postgresql":
        raise ValueError("a claim in one statement needs PostgreSQL")
    _, details = _take_statements("postgresql")
    return _claimed(connection, None, details, _take_params(subscriber_id, since))


def _claimed(connection: Connection, claim, details, params: dict) -> Confirmation | None:
    from mailer.services.looks import LOOK_COLUMNS

    if claim is not None and connection.execute(claim, params).first() is None:
        return None
    if isinstance(details, DriverStatement):
        rows = details.all(connection, params)
    else:
        rows = connection.execute(details, params).all()
    if not rows:
        return None
    # By position (_confirmation_details): the reader's email, uid, status, request; the
    # subscription's status, its newsletter's name and description; the look's columns.
    # Statuses compare as the strings they are stored as (StrEnum).
    email, uid, status, requested = rows[0][:4]
    statuses = [row[4] for row in rows if row[4] is not None]
    pending = SubscriptionStatus.PENDING in statuses
    listed = [(row[5], row[6]) for row in rows
              if row[4] == SubscriptionStatus.PENDING or not pending]
    already = status == SubscriberStatus.ACTIVE and not pending
    look = tuple(rows[0][-len(LOOK_COLUMNS):])
    if requested.tzinfo is None:  # the driver's value: naive UTC, as stored (UTCDateTime)
        requested = requested.replace(tzinfo=UTC)
    return Confirmation(
        email=email, uid=uid, requested=requested,
        already_subscribed=already,
        newsletters=[] if already else [(n, d) for n, d in listed if n is not None],
        look=look if look[0] is not None else None,
    )


def release_confirmation(session: Session, subscriber_id: int, requested: datetime) -> None:
    """Give a claim back (the mail was not sent), so a retry or the sweeper can take it: a
    mail is owed while nothing was sent since the request."""
    session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id, Subscriber.confirm_sent_at == requested)
        .values(confirm_sent_at=None)
        .execution_options(synchronize_session=False)
    )


def confirmations_owed(
    session: Session, older_than: datetime, newer_than: datetime, limit: int = 500
) -> list[int]:
    """Readers whose answer to a signup (a confirmation, or "already subscribed") was asked
    for within the link's lifetime but not sent."""
    return list(
        session.scalars(
            select(Subscriber.id)
            .where(
                _MAY_CONFIRM | (Subscriber.status == SubscriberStatus.ACTIVE),
                Subscriber.confirm_requested_at.is_not(None),
                Subscriber.confirm_requested_at < older_than,
                Subscriber.confirm_requested_at > newer_than,
                _CONFIRMATION_OWED,
            )
            .order_by(Subscriber.id)
            .limit(limit)
        )
    )


def unsubscribe(
    session: Session, uid: str, how: str, newsletter_id: int | None = None, now=None
) -> bool:
    """End the reader's subscription to one newsletter (None: the first, what links signed
    before there were several mean). A reader left with no open subscription is
    unsubscribed as a person too. Idempotent: True if this call changed anything."""
    now = now or utcnow()
    # The person's row locked first: a reader's two clicks on their last two newsletters at
    # once must not each see the other's subscription still open.
    sub = session.scalar(select(Subscriber).where(Subscriber.uid == uid).with_for_update())
    if sub is None:
        raise NotFound("This link belongs to no current subscription.")
    if newsletter_id is None:
        newsletter_id = nl.first(session).id
    ended = session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id == sub.id,
            Subscription.newsletter_id == newsletter_id,
            Subscription.status.in_(OPEN_SUBSCRIPTION),
        )
        .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if ended:
        _event(session, sub.id, "unsubscribed-from", f"{_slug(session, newsletter_id)}: {how}", now)
    left = _leave_if_nothing_open(session, sub, how, now)
    return bool(ended or left)


def unsubscribe_all(session: Session, sub: Subscriber, how: str, now=None) -> bool:
    """Every subscription ends and the person is unsubscribed; True if anything changed."""
    now = now or utcnow()
    session.execute(select(Subscriber.id).where(Subscriber.id == sub.id).with_for_update())
    ended = session.execute(
        update(Subscription)
        .where(
            Subscription.subscriber_id == sub.id,
            Subscription.status.in_(OPEN_SUBSCRIPTION),
        )
        .values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    left = _leave_if_nothing_open(session, sub, how, now)
    return bool(ended or left)


def _leave_if_nothing_open(session: Session, sub: Subscriber, how: str, now) -> bool:
    """An active or pending person with no active or pending subscription left becomes
    unsubscribed (one conditional UPDATE: two unsubscribes at once leave once)."""
    still_open = exists().where(
        Subscription.subscriber_id == Subscriber.id,
        Subscription.status.in_(OPEN_SUBSCRIPTION),
    )
    result = session.execute(
        update(Subscriber)
        .where(Subscriber.id == sub.id, Subscriber.status.in_(UNSUBSCRIBABLE), ~still_open)
        .values(status=SubscriberStatus.UNSUBSCRIBED, unsubscribed_at=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(sub)
    if not result.rowcount:
        return False
    _event(session, sub.id, "unsubscribed", how, now)
    hooks.emit(session, "subscriber.unsubscribed", hooks.subscriber_data(sub, how=how),
               subscriber_id=sub.id, now=now)
    return True


def subscription(
    session: Session, sub: Subscriber, newsletter_id: int | None
) -> Subscription | None:
    """The reader's subscription to a newsletter (None: the first), if they ever had one."""
    if newsletter_id is None:
        newsletter_id = nl.first(session).id
    return session.scalar(select(Subscription).where(
        Subscription.subscriber_id == sub.id, Subscription.newsletter_id == newsletter_id
    ))


def subscriptions_of(session: Session, subscriber_id: int) -> list[Subscription]:
    """A reader's subscriptions, oldest newsletter first (each with its newsletter)."""
    return list(session.scalars(
        select(Subscription)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.subscriber_id == subscriber_id)
        .order_by(Newsletter.id)
    ))


@dataclass
class Choice:
    """What the preferences form says about one newsletter: on or off, how often, which
    sections (a canonical key, already checked against what the newsletter offers)."""

    newsletter_id: int
    on: bool
    frequency: Frequency
    sections: str


def sections_offered(newsletter: Newsletter, site_sections: Iterable[str]) -> list[str]:
    """The sections a reader may choose in a newsletter: its own list, '' = the site's."""
    site = list(site_sections)
    own = newsletter.section_list
    return [s for s in site if s in own] if own else site


def apply_preferences(
    session: Session, sub: Subscriber, *, name: str | None, choices: list[Choice],
    consent: ConsentInfo, now=None,
) -> None:
    """The preferences form, all at once (the caller's one transaction): the name, then per
    newsletter its frequency and sections, then the toggles. Refused as a whole
    (ValidationError/Conflict, nothing flushed that the caller must keep) when a choice names
    a newsletter the reader may not choose here.

    Switching one on follows `resubscribe` (the link came by mail to this address); only a
    public newsletter that is not archived can be switched back on. New ones are started
    before any is ended, so a reader moving from one newsletter to another never passes
    through "unsubscribed" as a person."""
    now = now or utcnow()
    held = {s.newsletter_id: s for s in subscriptions_of(session, sub.id)}
    starting, ending = [], []
    for choice in choices:
        current = held.get(choice.newsletter_id)
        newsletter = current.newsletter if current is not None else session.get(
            Newsletter, choice.newsletter_id
        )
        if newsletter is None:
            raise ValidationError("newsletter", "That newsletter does not exist.")
        offered = newsletter.takes_readers
        if current is None and not offered:
            raise ValidationError(
                "newsletter", f"{newsletter.name} cannot be chosen on this page."
            )
        was_open = current is not None and current.status in OPEN_SUBSCRIPTION
        if choice.on and not was_open:
            if not offered:
                raise ValidationError(
                    "newsletter",
                    f"{newsletter.name} takes no new readers; it cannot be switched on again.",
                )
            starting.append(choice)
        elif not choice.on and was_open:
            ending.append(choice)
    for choice in starting:
        resubscribe(session, sub, consent, choice.newsletter_id, now=now)
    changes = []
    if sub.name != name:
        changes.append("name")
    sub.name = name
    for choice in choices:
        current = subscription(session, sub, choice.newsletter_id)
        if current is None:
            continue  # unticked and never had: nothing to set
        slug = current.newsletter.slug
        if current.frequency != choice.frequency:
            changes.append(f"frequency={slug}:{choice.frequency}")
        if current.sections != choice.sections:
            changes.append(f"sections={slug}:{choice.sections or 'all'}")
        current.frequency, current.sections = choice.frequency, choice.sections
        # The person's own columns keep the last choice made (what webhook payloads
        # report); deliveries read the subscription.
        sub.frequency, sub.sections = choice.frequency, choice.sections
    if changes:
        changed = list(dict.fromkeys(c.split("=")[0] for c in changes))
        _event(session, sub.id, "preferences", ", ".join(changes), now)
        hooks.emit(session, "subscriber.updated", hooks.subscriber_data(sub, changed=changed),
                   subscriber_id=sub.id, now=now)
    for choice in ending:
        unsubscribe(session, sub.uid, "preferences", choice.newsletter_id, now=now)


def request_email_change(session: Session, sub: Subscriber, new_email: str) -> bool:
    """Remember the new address until it confirms; False if it is the current one."""
    if new_email == sub.email:
        return False
    sub.pending_email = new_email
    _event(session, sub.id, "email-change-requested")
    return True


def confirm_email_change(session: Session, uid: str, new_email: str) -> Subscriber:
    sub = by_uid(session, uid)
    if sub.email == new_email:
        return sub
    if sub.pending_email != new_email:
        raise NotFound("This address change was replaced by a newer one or withdrawn.")
    if by_email(session, new_email) is not None:
        raise Conflict("Another subscription already uses that address.")
    previous = sub.email
    sub.email, sub.pending_email = new_email, None
    _event(session, sub.id, "email-changed")
    data = hooks.subscriber_data(sub, changed=["email"])
    data["subscriber"]["previous_email"] = previous
    hooks.emit(session, "subscriber.updated", data, subscriber_id=sub.id)
    return sub


def export_data(session: Session, sub: Subscriber) -> dict:
    """Everything we hold about a reader, as the 'download my data' JSON."""
    deliveries = session.execute(
        select(Delivery.issue_id, Delivery.status, Delivery.sent_at)
        .where(Delivery.subscriber_id == sub.id)
        .order_by(Delivery.id)
    ).all()
    iso = lambda d: d.isoformat() if d else None  # noqa: E731
    held = subscriptions_of(session, sub.id)
    return {
        "email": sub.email,
        "name": sub.name,
        "status": str(sub.status),
        "frequency": str(sub.frequency),
        "sections": sub.section_list,
        "source": sub.source,
        "created_at": iso(sub.created_at),
        "confirmed_at": iso(sub.confirmed_at),
        "unsubscribed_at": iso(sub.unsubscribed_at),
        "newsletters": [
            {
                "newsletter": s.newsletter.slug,
                "name": s.newsletter.name,
                "status": str(s.status),
                "frequency": str(s.frequency),
                "sections": s.section_list,
                "created_at": iso(s.created_at),
                "confirmed_at": iso(s.confirmed_at),
                "unsubscribed_at": iso(s.unsubscribed_at),
            }
            for s in held
        ],
        "consents": [
            {
                "kind": c.kind,
                "at": iso(c.at),
                "ip": c.ip,
                "user_agent": c.user_agent,
                "source": c.source,
                "wording": c.wording,
            }
            for c in sub.consents
        ],
        "events": [{"at": iso(e.at), "kind": e.kind, "detail": e.detail} for e in sub.events],
        "deliveries": [
            {"issue": d.issue_id, "status": str(d.status), "sent_at": iso(d.sent_at)}
            for d in deliveries
        ],
    }


def suppress(session: Session, email_hash: str, reason: str) -> None:
    if session.get(Suppression, email_hash) is None:
        session.add(Suppression(email_hash=email_hash, reason=reason))


def is_suppressed(session: Session, email_hash: str) -> bool:
    return session.get(Suppression, email_hash) is not None


def erase(session: Session, sub: Subscriber, hasher: Hasher) -> None:
    """Delete a reader's personal data; keep only a keyed hash so imports cannot re-add them.

    Their bounce and complaint events stay for the issues' counts, without the reader and
    without the server's words (which may quote the address)."""
    suppress(session, hasher(sub.email), "erased")
    sub_id = sub.id
    session.execute(
        update(BounceEvent)
        .where(BounceEvent.subscriber_id == sub.id)
        .values(diagnostic=None)
        .execution_options(synchronize_session=False)
    )
    session.delete(sub)
    session.flush()
    # The event carries no address, and the reader's earlier events lose theirs.
    hooks.scrub(session, sub_id)
    hooks.emit(session, "subscriber.erased", {"subscriber": {"id": sub_id}},
               subscriber_id=sub_id)


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    suppressed: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ImportRow:
    line: int
    email: str
    name: str | None = None
    frequency: str | None = None
    sections: str | None = None
    # The row's own newsletters (`;`-separated slugs); empty: the import's.
    newsletters: str | None = None


def _row_newsletters(raw: str | None, by_slug: dict[str, Newsletter]) -> list[int] | None:
    """The newsletter ids a row's `newsletters` column names (None when it names none)."""
    slugs = [part.strip().lower() for part in (raw or "").replace(",", ";").split(";")]
    slugs = [slug for slug in slugs if slug]
    if not slugs:
        return None
    ids = []
    for slug in slugs:
        found = by_slug.get(slug)
        if found is None:
            raise ValidationError("newsletters", f"No newsletter {slug[:60]!r}.")
        if found.archived_at is not None:
            raise ValidationError("newsletters", f"The newsletter {slug[:60]!r} is archived.")
        ids.append(found.id)
    return sorted(set(ids))


def import_rows(
    session: Session,
    rows: Iterable[ImportRow],
    *,
    source: str,
    known_sections: Iterable[str],
    hasher: Hasher,
    report: ImportReport,
    newsletter_ids: Iterable[int] | None = None,
    now=None,
) -> ImportReport:
    """Add already-consented readers as active, each with an active subscription to the
    newsletters its row names (`ImportRow.newsletters`), else to `newsletter_ids` (default:
    the signup defaults); existing and suppressed addresses are left alone. A row naming an
    unknown or archived newsletter is invalid and adds nothing."""
    now = now or utcnow()
    if newsletter_ids is None:
        newsletter_ids = [n.id for n in nl.signup_defaults(session)]
    newsletter_ids = sorted(set(newsletter_ids))
    known = list(known_sections)
    consent = ConsentInfo(source=f"import: {source}", wording=f"Imported; consent source: {source}")
    rows = list(rows)
    by_slug = (
        {n.slug: n for n in nl.all_newsletters(session)}
        if any((row.newsletters or "").strip() for row in rows) else {}
    )
    parsed: dict[str, tuple] = {}
    for row in rows:
        try:
            email = normalize_email(row.email)
            name = check_text("name", row.name, NAME_MAX)
            freq = parse_frequency(row.frequency)
            secs = parse_sections((row.sections or "").replace(";", ",").split(","), known)
            chosen = _row_newsletters(row.newsletters, by_slug) or newsletter_ids
        except ValidationError as e:
            report.invalid.append((row.line, e.message))
            continue
        if email in parsed:
            report.existing += 1
            continue
        parsed[email] = (name, freq, secs, chosen)
    if not parsed:
        return report
    # Three queries per chunk, not per row: who exists, who is suppressed, then one flush.
    present = set(session.scalars(select(Subscriber.email).where(Subscriber.email.in_(parsed))))
    hashes = {email: hasher(email) for email in parsed if email not in present}
    suppressed = set(
        session.scalars(
            select(Suppression.email_hash).where(Suppression.email_hash.in_(hashes.values()))
        )
    )
    new = []
    chosen_for: dict[str, list[int]] = {}
    for email, (name, freq, secs, chosen) in parsed.items():
        if email in present:
            report.existing += 1
        elif hashes[email] in suppressed:
            report.suppressed += 1
        else:
            chosen_for[email] = chosen
            new.append(
                Subscriber(
                    email=email,
                    name=name,
                    frequency=freq,
                    sections=secs,
                    status=SubscriberStatus.ACTIVE,
                    source=consent.source[:200],
                    created_at=now,
                    confirmed_at=now,
                )
            )
    session.add_all(new)
    session.flush()
    endpoint_ids = hooks.endpoints_for(session, "subscriber.created")
    session.add_all(
        Subscription(
            subscriber_id=sub.id, newsletter_id=newsletter_id, status=SubscriptionStatus.ACTIVE,
            frequency=sub.frequency, sections=sub.sections, created_at=now, confirmed_at=now,
        )
        for sub in new
        for newsletter_id in chosen_for[sub.email]
    )
    for sub in new:
        _consent(session, sub.id, "import", consent, now)
        _event(session, sub.id, "imported", source[:200], now)
        if endpoint_ids:
            hooks.emit(session, "subscriber.created", hooks.subscriber_data(sub),
                       subscriber_id=sub.id, now=now, endpoint_ids=endpoint_ids)
    session.flush()
    report.added += len(new)
    return report


EXPORT_BATCH = 500  # readers an export reads at a time, their newsletters with them
# What an export reads of a reader (besides their newsletters).
EXPORT_COLUMNS = (Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status,
                  Subscriber.frequency, Subscriber.sections, Subscriber.created_at,
                  Subscriber.confirmed_at, Subscriber.unsubscribed_at, Subscriber.source)


def export_batches(session: Session, where=()):
    """The readers matching `where`, by id, in batches of up to EXPORT_BATCH readers: lists
    of (row, slugs), row the reader's EXPORT_COLUMNS (then one newsletter's slug, to ignore)
    and slugs the newsletters of their active subscriptions, oldest newsletter first.

    Each batch is one query of its own (keyset, by id), not a page of one streamed query: a
    query run while PostgreSQL streams another made an export of 100,000 readers take
    minutes. The batch's readers come with their newsletters joined (a reader of three
    newsletters is three rows), as plain rows: no ORM object per reader, no second query.
    """
    held = aliased(Subscription)
    last = 0
    while True:
        readers = (
            select(*EXPORT_COLUMNS).where(*where, Subscriber.id > last)
            .order_by(Subscriber.id).limit(EXPORT_BATCH).subquery("readers")
        )
        batch: list[tuple] = []
        reader = None
        # Through the connection: Core rows, without the ORM's loading machinery.
        for row in session.connection().execute(
            select(readers, Newsletter.slug)
            .outerjoin(held, and_(held.subscriber_id == readers.c.id,
                                  held.status == SubscriptionStatus.ACTIVE))
            .outerjoin(Newsletter, Newsletter.id == held.newsletter_id)
            .order_by(readers.c.id, Newsletter.id)
        ):
            if reader is None or reader[0][0] != row[0]:
                reader = (row, [])
                batch.append(reader)
            if row[-1] is not None:
                reader[1].append(row[-1])
        if not batch:
            return
        yield batch
        last = batch[-1][0][0]


def subscriptions_by_reader(
    session: Session, subscriber_ids: Iterable[int], *, active_only: bool = False
) -> dict[int, list]:
    """These readers' subscriptions (oldest newsletter first), by subscriber id, in one query:
    rows with the subscription's newsletter_id, status, frequency, sections, created_at,
    confirmed_at and unsubscribed_at, and the newsletter's slug and name."""
    stmt = (
        select(Subscription.subscriber_id, Subscription.newsletter_id, Subscription.status,
               Subscription.frequency, Subscription.sections, Subscription.created_at,
               Subscription.confirmed_at, Subscription.unsubscribed_at, Newsletter.slug,
               Newsletter.name)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.subscriber_id.in_(list(subscriber_ids)))
        .order_by(Subscription.subscriber_id, Newsletter.id)
    )
    if active_only:
        stmt = stmt.where(Subscription.status == SubscriptionStatus.ACTIVE)
    found: dict[int, list] = {}
    for row in session.execute(stmt):
        found.setdefault(row.subscriber_id, []).append(row)
    return found


def counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
    counts = {str(s): 0 for s in SubscriberStatus}
    counts.update({str(status): n for status, n in rows})
    return counts

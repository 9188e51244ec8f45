"""Newsletters: finding them (by slug, the ones a public form offers, the ones a plain signup
gets) and managing them (create, update, list with reader counts, remove or archive). One set
of calls for the console, the API and the CLI.

Every database has at least one newsletter (0013 makes the first: an older database's readers,
issues and schedules all belong to it).

The look (accent colour, header font, logo, masthead title, footer) is validated and changed
elsewhere; create and update here take the newsletter's identity, sender and digest defaults.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.headerregistry import Address
from email.utils import formataddr, parseaddr

from sqlalchemy import delete, exists, func, literal, or_, select, union_all
from sqlalchemy.orm import Session, aliased

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.errors import Conflict, NotFound, ValidationError
from mailer.models import (
    Issue,
    IssueStatus,
    Newsletter,
    Schedule,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.models.subscribers import sections_list
from mailer.services import hooks

# The module, not its names: subscriptions.py uses this module too, and whichever of the two
# is imported first finds the other half-loaded (its functions are looked up when called).
from mailer.services import subscriptions as readers

SLUG_MAX = 60
NAME_MAX = 200
DESCRIPTION_MAX = 1000
LIST_ID_MAX = 200
# Digest defaults: the same ranges as a schedule's.
LIMITS = {"latest_n": (0, 100), "popular_m": (0, 100), "min_items": (0, 100)}
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# RFC 2919's list-id: dot-atoms with at least one dot, here in the letters, digits, hyphens
# and underscores that mail filters and list software all read alike.
LIST_ID = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
# The fields create() and update() take (the look is changed on its own page).
FIELDS = ("slug", "name", "description", "from", "reply_to", "list_id", "public",
          "signup_default", "latest_n", "popular_m", "min_items", "sections", "archived")
# Issues in these states went (or are going) out to readers: their newsletter stays.
SENT_STATES = (IssueStatus.SENDING, IssueStatus.PAUSED, IssueStatus.FINISHED)
# Counts of readers per newsletter, by what their subscription means for the next issue.
COUNT_KEYS = ("active", "pending", "unsubscribed", "suppressed")


# --- finding ---------------------------------------------------------------------------------


def first(session: Session) -> Newsletter:
    """The newsletter that existed before there were several: the one links signed before
    newsletters existed (unsubscribe, preferences, confirmations) are about."""
    found = session.scalar(select(Newsletter).order_by(Newsletter.id).limit(1))
    if found is None:  # only a database emptied by hand; 0013 always makes one
        raise NotFound("No newsletter is set up.")
    return found


def get(session: Session, newsletter_id: int) -> Newsletter:
    found = session.get(Newsletter, newsletter_id)
    if found is None:
        raise NotFound(f"No newsletter {newsletter_id}.")
    return found


def by_slug(session: Session, slug: str) -> Newsletter:
    found = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
    if found is None:
        raise NotFound(f"No newsletter {slug[:60]!r}.")
    return found


def by_slugs(session: Session, slugs) -> list[Newsletter]:
    """The newsletters of these slugs (those that exist), in one query."""
    return list(session.scalars(select(Newsletter).where(Newsletter.slug.in_(list(slugs)))))


def offered(session: Session) -> list[Newsletter]:
    """What public forms list: public and not archived, oldest first."""
    return list(session.scalars(
        select(Newsletter)
        .where(Newsletter.public.is_(True), Newsletter.archived_at.is_(None))
        .order_by(Newsletter.id)
    ))


def signup_defaults(session: Session) -> list[Newsletter]:
    """What a signup that names no newsletter subscribes to (an older form or snippet)."""
    found = list(session.scalars(
        select(Newsletter)
        .where(Newsletter.signup_default.is_(True), Newsletter.archived_at.is_(None))
        .order_by(Newsletter.id)
    ))
    return found or [first(session)]


def all_newsletters(session: Session) -> list[Newsletter]:
    """Every newsletter, archived ones too, oldest first."""
    return list(session.scalars(select(Newsletter).order_by(Newsletter.id)))


# --- checking what an editor typed -------------------------------------------------------------


def check_slug(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("slug", "Give the newsletter a slug, e.g. 'morning-briefing'.")
    value = value.strip()
    if len(value) > SLUG_MAX:
        raise ValidationError("slug", f"The slug is longer than {SLUG_MAX} characters.")
    if not SLUG.fullmatch(value):
        raise ValidationError("slug", "The slug may only have lowercase letters, digits and "
                                      "single hyphens between them, e.g. 'morning-briefing'.")
    if value.isdigit():
        # /archive/123 is an issue of the archive's older addresses.
        raise ValidationError("slug", "The slug needs a letter: numbers alone are issue ids "
                                      "in archive addresses.")
    return value


def check_name(value) -> str:
    name = readers.check_text("name", value if isinstance(value, str) else None, NAME_MAX)
    if not name:
        raise ValidationError("name", "Give the newsletter a name.")
    return name


def check_description(value) -> str:
    if value is not None and not isinstance(value, str):
        raise ValidationError("description", "The description must be text.")
    if value and len(value) > DESCRIPTION_MAX:  # (before stripping: a bound on the work)
        raise ValidationError("description",
                              f"The description is longer than {DESCRIPTION_MAX} characters.")
    # Line breaks are fine in a description; other control characters are not.
    lines = [readers.check_text("description", line, DESCRIPTION_MAX) or ""
             for line in (value or "").replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip()


def check_from(value) -> tuple[str | None, str | None]:
    """(display name, address) from 'Name <address>' (or a bare address); (None, None) for
    nothing, which means MAILER_FROM. The same rule as MAILER_FROM's."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if not isinstance(value, str):
        raise ValidationError("from", "from must be text like 'Name <address>'.")
    if any(c in value for c in "\r\n"):
        raise ValidationError("from", "from contains a line break.")
    name, address = parseaddr(value.strip())
    if "@" not in address:
        raise ValidationError("from", f"from must look like 'Name <address>', not "
                                      f"{value.strip()[:80]!r}.")
    try:
        address = readers.normalize_email(address)
    except ValidationError as e:
        raise ValidationError("from", f"The From address: {e.message}") from None
    name = readers.check_text("from", name, NAME_MAX)
    return name, address


def format_from(newsletter: Newsletter) -> str | None:
    """'Name <address>' as set on the newsletter; None when it uses MAILER_FROM."""
    if not newsletter.from_address:
        return None
    return formataddr((newsletter.from_name or "", newsletter.from_address))


def sender(newsletter: Newsletter, settings) -> Address:
    """The From its mail carries: its own, else MAILER_FROM (its name, else MAILER_FROM's)."""
    site = settings.from_address
    if not newsletter.from_address:
        return site
    local, _, domain = newsletter.from_address.rpartition("@")
    return Address(display_name=newsletter.from_name or "", username=local, domain=domain)


def check_reply_to(value) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValidationError("reply_to", "reply_to must be an email address.")
    try:
        return readers.normalize_email(value)
    except ValidationError as e:
        raise ValidationError("reply_to", f"The Reply-To address: {e.message}") from None


def check_list_id(value) -> str | None:
    """An RFC 2919 List-Id identifier such as 'morning.daily.example' (no angle brackets, no
    phrase); None means one derived from the slug and the sending domain."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValidationError("list_id", "list_id must be text like 'morning.daily.example'.")
    value = value.strip().removeprefix("<").removesuffix(">").strip()
    if len(value) > LIST_ID_MAX:
        raise ValidationError("list_id", f"The List-Id is longer than {LIST_ID_MAX} characters.")
    if not LIST_ID.fullmatch(value):
        raise ValidationError("list_id", "The List-Id must be dotted words of letters, digits, "
                                         "hyphens and underscores, like "
                                         "'morning.daily.example'.")
    return value.lower()


def list_id(newsletter: Newsletter, settings) -> str:
    """The identifier its mail's List-Id carries: its own, else `<slug>.<sender domain>`."""
    return newsletter.list_id or f"{newsletter.slug}.{settings.sender_domain}"


def check_flag(field: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "on", "off", "1",
                                                            "0", "yes", "no"):
        return value.strip().lower() in ("true", "on", "1", "yes")
    raise ValidationError(field, f"{field} must be true or false.")


def check_number(field: str, value) -> int:
    low, high = LIMITS[field]
    if isinstance(value, bool):
        raise ValidationError(field, f"{field} must be a whole number.")
    try:
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(field, f"{field} must be a whole number.") from None
    if isinstance(value, float) and value != n or not low <= n <= high:
        raise ValidationError(field, f"{field} must be between {low} and {high}.")
    return n


# --- creating and changing ---------------------------------------------------------------------


def _unknown_fields(data: dict) -> None:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValidationError(unknown[0][:60], f"Unknown field {unknown[0][:60]!r}; known: "
                                               f"{', '.join(FIELDS)}.")


def _check_list_id_free(session: Session, newsletter: Newsletter, chosen: str | None,
                        domain: str | None) -> None:
    """Conflict when another newsletter's mail carries the same List-Id (mail filters and
    list software would take two newsletters for one). Without the sender domain only the
    List-Ids set by hand are compared."""
    def effective(n: Newsletter, own: str | None) -> str | None:
        if own:
            return own.lower()
        return f"{n.slug}.{domain}".lower() if domain else None

    mine = effective(newsletter, chosen)
    if mine is None:
        return
    for other in all_newsletters(session):
        if other.id != newsletter.id and effective(other, other.list_id) == mine:
            raise Conflict(f"The List-Id {mine!r} is already newsletter {other.slug!r}'s.")


def _apply(session: Session, newsletter: Newsletter, data: dict, known_sections, now,
           domain: str | None = None) -> None:
    """Check every given field, then set them; nothing is set when one is refused."""
    changes: dict = {}
    if "name" in data:
        changes["name"] = check_name(data["name"])
    if "description" in data:
        changes["description"] = check_description(data["description"])
    if "from" in data:
        changes["from_name"], changes["from_address"] = check_from(data["from"])
    if "reply_to" in data:
        changes["reply_to"] = check_reply_to(data["reply_to"])
    if "list_id" in data:
        changes["list_id"] = check_list_id(data["list_id"])
    for flag in ("public", "signup_default"):
        if flag in data:
            changes[flag] = check_flag(flag, data[flag])
    for field in LIMITS:
        if field in data and data[field] is not None and data[field] != "":
            changes[field] = check_number(field, data[field])
    latest = changes.get("latest_n", newsletter.latest_n)
    popular = changes.get("popular_m", newsletter.popular_m)
    if latest + popular == 0:
        raise ValidationError("latest_n", "A digest needs latest or popular articles (or both).")
    if "sections" in data:
        changes["sections"] = readers.parse_sections(data["sections"] or None, known_sections)
    if "archived" in data:
        archived = check_flag("archived", data["archived"])
        if archived != (newsletter.archived_at is not None):
            changes["archived_at"] = now if archived else None
    if newsletter.id is None or "list_id" in changes:
        _check_list_id_free(session, newsletter, changes.get("list_id", newsletter.list_id),
                            domain)
    for key, value in changes.items():
        setattr(newsletter, key, value)


def create(session: Session, data: dict, *, known_sections=(), defaults=(10, 5, 1),
           sender_domain: str | None = None, now: datetime | None = None) -> Newsletter:
    """A new newsletter from `data` (the keys of FIELDS); ValidationError, or Conflict for a
    slug or List-Id another newsletter has. `defaults` are the site's digest defaults
    (MAILER_DIGEST_LATEST, _POPULAR, _MIN_ITEMS) for what `data` leaves out; `sender_domain`
    (MAILER_FROM's) lets List-Ids derived from slugs be compared too."""
    _unknown_fields(data)
    now = now or utcnow()
    slug = check_slug(data.get("slug"))
    if "name" not in data:
        raise ValidationError("name", "Give the newsletter a name.")
    newsletter = Newsletter(
        slug=slug, name="", description="", public=True, signup_default=False,
        latest_n=defaults[0], popular_m=defaults[1], min_items=defaults[2], sections="",
        created_at=now, updated_at=now,
    )
    if session.scalar(select(exists().where(Newsletter.slug == slug))):
        raise Conflict(f"There is already a newsletter {slug!r}.")
    _apply(session, newsletter, {k: v for k, v in data.items() if k != "slug"}, known_sections,
           now, sender_domain)
    session.add(newsletter)
    session.flush()
    return newsletter


def update(session: Session, newsletter: Newsletter, data: dict, *, known_sections=(),
           sender_domain: str | None = None, now: datetime | None = None) -> Newsletter:
    """Change the fields given in `data` (the others stay); the slug cannot change (its
    archive, feed and signup addresses are out in the world). `archived` true archives it
    (no new issues; its archive stays), false brings it back."""
    _unknown_fields(data)
    if "slug" in data and data["slug"] != newsletter.slug:
        raise ValidationError("slug", "A newsletter's slug cannot change: its archive, feed "
                                      "and signup addresses would break.")
    now = now or utcnow()
    _apply(session, newsletter, {k: v for k, v in data.items() if k != "slug"}, known_sections,
           now, sender_domain)
    newsletter.updated_at = now
    session.flush()
    return newsletter


# --- reading with counts -----------------------------------------------------------------------


def reader_counts(session: Session) -> dict[int, dict[str, int]]:
    """Readers per newsletter, in one query: `active` get its next issue, `pending` have not
    confirmed, `unsubscribed` left it, `suppressed` kept their subscription but bounced or
    complained as a person (they get nothing until reactivated)."""
    # Subscriptions by status need no reader; only the few active subscriptions of readers
    # who are not active themselves (suppressed) are looked up, instead of joining every
    # subscription to its reader.
    by_status = (
        select(Subscription.newsletter_id, Subscription.status, func.count(),
               literal(False).label("suppressed"))
        .group_by(Subscription.newsletter_id, Subscription.status)
    )
    suppressed = (
        select(Subscription.newsletter_id, Subscription.status, func.count(),
               literal(True).label("suppressed"))
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.status == SubscriptionStatus.ACTIVE,
               Subscriber.status.in_([s for s in SubscriberStatus if s != SubscriberStatus.ACTIVE]))
        .group_by(Subscription.newsletter_id, Subscription.status)
    )
    out: dict[int, dict[str, int]] = {}
    for newsletter_id, status, n, is_suppressed in session.execute(union_all(by_status, suppressed)):
        counts = out.setdefault(newsletter_id, dict.fromkeys(COUNT_KEYS, 0))
        if is_suppressed:
            counts["active"] -= n
            counts["suppressed"] += n
        else:
            counts[str(status)] += n
    return out


def with_counts(session: Session) -> list[tuple[Newsletter, dict[str, int]]]:
    """Every newsletter, oldest first, with its reader counts (two queries in all)."""
    counts = reader_counts(session)
    return [(n, counts.get(n.id, dict.fromkeys(COUNT_KEYS, 0))) for n in all_newsletters(session)]


def counts_for(session: Session, newsletter: Newsletter) -> dict[str, int]:
    rows = session.execute(
        select(Subscription.status, Subscriber.status, func.count())
        .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
        .where(Subscription.newsletter_id == newsletter.id)
        .group_by(Subscription.status, Subscriber.status)
    )
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for status, person, n in rows:
        key = ("suppressed" if status == SubscriptionStatus.ACTIVE
               and person != SubscriberStatus.ACTIVE else str(status))
        counts[key] += n
    return counts


def sent_issues(session: Session, newsletter: Newsletter) -> int:
    """How many of its issues went out (or started to): sending, paused, finished, or
    cancelled after their send started."""
    return session.scalar(
        select(func.count()).select_from(Issue).where(
            Issue.newsletter_id == newsletter.id,
            or_(Issue.status.in_(SENT_STATES), Issue.started_at.is_not(None)),
        )
    ) or 0


def as_dict(newsletter: Newsletter, counts: dict[str, int] | None = None) -> dict:
    """The newsletter for the API and `--json`."""
    return {
        "id": newsletter.id,
        "slug": newsletter.slug,
        "name": newsletter.name,
        "description": newsletter.description or "",
        "from": format_from(newsletter),
        "reply_to": newsletter.reply_to,
        "list_id": newsletter.list_id,
        "public": bool(newsletter.public),
        "signup_default": bool(newsletter.signup_default),
        "archived": newsletter.archived_at is not None,
        "archived_at": newsletter.archived_at.isoformat() if newsletter.archived_at else None,
        "latest_n": newsletter.latest_n,
        "popular_m": newsletter.popular_m,
        "min_items": newsletter.min_items,
        "sections": sections_list(newsletter.sections),
        "readers": dict(counts) if counts is not None else dict.fromkeys(COUNT_KEYS, 0),
        "created_at": newsletter.created_at.isoformat(),
        "updated_at": newsletter.updated_at.isoformat(),
    }


# --- removing ----------------------------------------------------------------------------------


class WasSent(Conflict):
    """A newsletter that issues went out from is archived, never removed."""


def removal_refused(session: Session, newsletter: Newsletter) -> Conflict | None:
    """Why the newsletter cannot be removed, or None if it can."""
    sent = sent_issues(session, newsletter)
    if sent:
        return WasSent(f"Newsletter {newsletter.slug!r} was sent from ({sent} "
                f"issue{'s' if sent != 1 else ''}): its archive and readers' history need it. "
                "Archive it instead: no new issues, its archive stays.")
    others = session.scalar(select(func.count()).select_from(Newsletter)
                            .where(Newsletter.id != newsletter.id))
    if not others:
        return Conflict(f"Newsletter {newsletter.slug!r} is the only one: a site needs at "
                        "least one.")
    return None


def remove(session: Session, newsletter: Newsletter, now: datetime | None = None, *,
           settings: Settings) -> None:
    """Delete a newsletter nothing was ever sent from, with its unsent issues (drafts,
    scheduled, skipped, cancelled before sending), its schedules and its subscriptions.
    Conflict (409) otherwise, saying to archive it. A reader for whom it was the last open
    (active or pending) subscription is unsubscribed as a person, as if they had left it.
    Its stored logo's file goes after the commit, unless another look shows it."""
    from mailer.services import looks  # looks reads newsletters: imported when needed
    refused = removal_refused(session, newsletter)
    if refused is not None:
        raise refused
    now = now or utcnow()
    nid = newsletter.id
    # Readers of it with nothing open elsewhere leave as persons, as an unsubscribe from
    # their last newsletter would make them (subscriptions.py's rule: active or pending).
    open_states = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
    other = aliased(Subscription)
    open_elsewhere = (
        select(other.id).where(
            other.subscriber_id == Subscriber.id, other.newsletter_id != nid,
            other.status.in_(open_states))
    ).exists()
    left = list(session.scalars(
        select(Subscriber).join(Subscription, Subscription.subscriber_id == Subscriber.id)
        .where(Subscription.newsletter_id == nid, Subscription.status.in_(open_states),
               Subscriber.status.in_((SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)),
               ~open_elsewhere)
    ))
    how = f"newsletter {newsletter.slug} removed"
    for sub in left:
        sub.status, sub.unsubscribed_at = SubscriberStatus.UNSUBSCRIBED, now
        session.add(SubscriberEvent(subscriber_id=sub.id, kind="unsubscribed", at=now,
                                    detail=how))
        hooks.emit(session, "subscriber.unsubscribed", hooks.subscriber_data(sub, how=how),
                   subscriber_id=sub.id, now=now)
    session.flush()
    for statement in (
        delete(Subscription).where(Subscription.newsletter_id == nid),
        delete(Issue).where(Issue.newsletter_id == nid),  # none of them was ever sent
        delete(Schedule).where(Schedule.newsletter_id == nid),
    ):
        session.execute(statement.execution_options(synchronize_session=False))
    logo = newsletter.logo_file
    session.delete(newsletter)
    session.flush()
    looks.forget_after_commit(session, settings, [logo])
    session.expire_all()

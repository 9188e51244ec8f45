"""What the console shows: readers by status over time, recent issues with their counts, the
queue, warnings, an issue's audience before it is sent and its report after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import (
    Date,
    Integer,
    and_,
    case,
    cast,
    distinct,
    func,
    literal,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.db import UTCDateTime
from mailer.models import (
    JOINED_KINDS,
    LEFT_KINDS,
    Article,
    BounceEvent,
    Click,
    Delivery,
    DeliveryStatus,
    Feed,
    HookEndpoint,
    Issue,
    IssueItem,
    IssueStatus,
    IssueVariant,
    Schedule,
    Subscriber,
    SubscriberEvent,
    SubscriberImport,
    SubscriberStatus,
    Subscription,
)
from mailer.services import bounces as bounce_reports
from mailer.services import deliveries, schedules
from mailer.services.render import build_variant

D, I, S = DeliveryStatus, IssueStatus, Subscriber
DAY_SECONDS = 86400
WENT_OUT = (I.SENDING, I.PAUSED, I.FINISHED, I.CANCELLED)
# Readers who joined or left, as subscriber_events records them.
JOINED, LEFT = JOINED_KINDS, LEFT_KINDS
# Bounce-rate warning: an issue needs this many tried messages to count, and is "rising"
# when its rate is above both the floor and 1.5 times the average of the issues before it.
BOUNCE_MIN_TRIED = 10
BOUNCE_FLOOR = 0.02
BOUNCE_HIGH = 0.05


def _day_number(session: Session, column):
    """Days since 1970-01-01 (UTC) of a timestamp column, computed by the database."""
    if session.get_bind().dialect.name == "postgresql":
        # Timestamps are stored as naive UTC: their date is the UTC day. A date minus a date
        # is a whole number of days, far cheaper than dividing the epoch as a NUMERIC.
        return type_coerce(cast(column, Date) - literal(date(1970, 1, 1), Date), Integer)
    return cast(func.julianday(column) - 2440587.5, Integer)


def _epoch_day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


# --- readers over time --------------------------------------------------------------------


def readers_over_time(session: Session, days: int = 30, now: datetime | None = None) -> dict:
    """Readers active, pending and gone at the end of each of the last `days` UTC days, and
    `counts`: readers by status now (the same scan: one pass over the readers for both).

    Rebuilt from each reader's timestamps (created, confirmed, and when they left), grouped
    by the database into a few rows per day; readers who erased their data are not counted.
    Readers' joins and departures per day come from their event history.
    """
    now = now or utcnow()
    left_at = case(
        # (updated_at stands in for rows written without the timestamp, e.g. by hand)
        (S.status == SubscriberStatus.UNSUBSCRIBED, func.coalesce(S.unsubscribed_at,
                                                                  S.updated_at)),
        (S.status == SubscriberStatus.BOUNCED, func.coalesce(S.bounced_at, S.updated_at)),
        (S.status == SubscriberStatus.COMPLAINED, func.coalesce(S.complained_at,
                                                                S.updated_at)),
        else_=None,
    )
    last = now.date()
    span = [last - timedelta(days=days - 1 - k) for k in range(days)]
    before = _epoch_day(span[0]) - 1
    # The start of that day: a timestamp earlier than it is "before the window".
    cutoff = datetime.combine(span[0] - timedelta(days=1), datetime.min.time(), tzinfo=UTC)

    def day_of(column):
        # Every day before the window is the same to the chart: one group, not hundreds. Most
        # readers are older than the window: a comparison settles them, no day is computed.
        return case((column < literal(cutoff, UTCDateTime), before),
                    else_=_day_number(session, column))

    created, confirmed, left = day_of(S.created_at), day_of(S.confirmed_at), day_of(left_at)
    groups = session.execute(
        select(created, confirmed, left, S.status, func.count())
        .group_by(created, confirmed, left, S.status)
    ).all()
    counts = {str(s): 0 for s in SubscriberStatus}
    for *_, status, n in groups:
        counts[str(status)] += n
    series = {"active": [], "pending": [], "gone": []}
    for day in span:
        d = _epoch_day(day)
        active = pending = gone = 0
        for c, f, gone_day, _status, n in groups:
            if c is None or c > d:
                continue
            if gone_day is not None and gone_day <= d:
                gone += n
            elif f is not None and f <= d:
                active += n
            else:
                pending += n
        series["active"].append(active)
        series["pending"].append(pending)
        series["gone"].append(gone)

    first = datetime.combine(span[0], datetime.min.time(), tzinfo=now.tzinfo)
    event_day = _day_number(session, SubscriberEvent.at)
    flows = {"joined": [0] * days, "left": [0] * days}
    for d, kind, n in session.execute(
        select(event_day, SubscriberEvent.kind, func.count())
        # The kinds written into the SQL, not sent as parameters: the index on them holds
        # those kinds only, which a plan made for any parameters could not use.
        .where(SubscriberEvent.at >= first,
               SubscriberEvent.kind.in_([literal_column(f"'{k}'") for k in JOINED + LEFT]))
        .group_by(event_day, SubscriberEvent.kind)
    ):
        index = d - _epoch_day(span[0])
        if 0 <= index < days:
            flows["joined" if kind in JOINED else "left"][index] += n
    return {"days": span, "counts": counts, **series, **flows}


# --- issues -------------------------------------------------------------------------------


def issue_counts(session: Session, issue_ids: list[int]) -> dict[int, dict]:
    """Per issue: readers, sent, bounced (refused by the server), clicks and clickers."""
    out = {i: {"total": 0, "sent": 0, "bounced": 0, "clicks": 0, "clickers": 0} for i in issue_ids}
    if not issue_ids:
        return out
    # By (issue, status) alone the index on the two answers without reading the rows: an
    # issue of 100,000 readers is that many rows. Only a refusal needs its row read, to know
    # whether it was tried (a bounce) or never sent (the reader had gone).
    for issue_id, state, n in session.execute(
        select(Delivery.issue_id, Delivery.status, func.count())
        .where(Delivery.issue_id.in_(issue_ids))
        .group_by(Delivery.issue_id, Delivery.status)
    ):
        out[issue_id]["total"] += n
        if state == D.SENT:
            out[issue_id]["sent"] += n
    for issue_id, n in session.execute(
        select(Delivery.issue_id, func.count())
        .where(Delivery.issue_id.in_(issue_ids), Delivery.status == D.FAILED_PERMANENT,
               Delivery.attempts > 0)
        .group_by(Delivery.issue_id)
    ):
        out[issue_id]["bounced"] = n
    for issue_id, clicks, clickers in session.execute(
        select(Click.issue_id, func.count(), func.count(distinct(Click.delivery_id)))
        .where(Click.issue_id.in_(issue_ids), Click.counted.is_(True))
        .group_by(Click.issue_id)
    ):
        out[issue_id].update(clicks=clicks, clickers=clickers)
    return out


def sent_subjects(session: Session, issue_ids: list[int]) -> dict[int, str]:
    """The subject readers saw (the first rendered variant's), for issues that went out."""
    out: dict[int, str] = {}
    if issue_ids:
        for issue_id, subject in session.execute(
            select(IssueVariant.issue_id, IssueVariant.subject)
            .where(IssueVariant.issue_id.in_(issue_ids), IssueVariant.empty.is_(False))
            .order_by(IssueVariant.id)
        ):
            out.setdefault(issue_id, subject)
    return out


def last_issues(session: Session, limit: int = 8) -> list[dict]:
    """The issues that went out most recently, newest first, with their counts."""
    issues = list(
        session.scalars(
            select(Issue)
            .where(Issue.status.in_(WENT_OUT))
            .order_by(Issue.started_at.desc().nulls_last(), Issue.id.desc())
            .limit(limit)
        )
    )
    ids = [i.id for i in issues]
    counts = issue_counts(session, ids)
    subjects = sent_subjects(session, ids)
    return [
        {"issue": i, "subject": subjects.get(i.id, i.subject), **counts[i.id]} for i in issues
    ]


def last_issues_by_newsletter(session: Session, per_newsletter: int = 5) -> list[list[dict]]:
    """Each newsletter's issues that went out most recently (at most `per_newsletter`),
    newest first, with their counts as last_issues gives them; the newsletter whose latest
    issue went out last comes first. A bounce rate is judged against the same newsletter's
    earlier issues: newsletters differ in how old and how clean their lists are."""
    newest = func.row_number().over(
        partition_by=Issue.newsletter_id,
        order_by=(Issue.started_at.desc().nulls_last(), Issue.id.desc()),
    ).label("newest")
    ranked = select(Issue.id, newest).where(Issue.status.in_(WENT_OUT)).subquery()
    issues = list(
        session.scalars(
            select(Issue)
            .join(ranked, ranked.c.id == Issue.id)
            .where(ranked.c.newest <= per_newsletter)
            .order_by(Issue.started_at.desc().nulls_last(), Issue.id.desc())
        )
    )
    ids = [i.id for i in issues]
    counts = issue_counts(session, ids)
    groups: dict[int | None, list[dict]] = {}
    for i in issues:  # newest first, so each group is too, and so is the groups' order
        groups.setdefault(i.newsletter_id, []).append({"issue": i, **counts[i.id]})
    return list(groups.values())


def bounce_trend(rows: list[dict]) -> tuple[float, float | None] | None:
    """(latest rate, average of the earlier ones) over issues with enough tried messages,
    rows newest first; None when no issue has enough."""
    rates = [r["bounced"] / (r["sent"] + r["bounced"]) for r in _judged(rows)]
    if not rates:
        return None
    earlier = rates[1:5]
    return rates[0], (sum(earlier) / len(earlier) if earlier else None)


def _judged(rows: list[dict]) -> list[dict]:
    """The rows with enough tried messages to judge their bounce rate by."""
    return [r for r in rows if r["sent"] + r["bounced"] >= BOUNCE_MIN_TRIED]


# --- queue, next runs, warnings -------------------------------------------------------------


def queue_state(session: Session) -> dict:
    """Issues in flight and their deliveries still to go, retries, uncertain rows, imports."""
    issues = {str(s): 0 for s in (I.SCHEDULED, I.SENDING, I.PAUSED)}
    for state, n in session.execute(
        select(Issue.status, func.count())
        .where(Issue.status.in_((I.SCHEDULED, I.SENDING, I.PAUSED)))
        .group_by(Issue.status)
    ):
        issues[str(state)] = n
    waiting = {str(s): 0 for s in deliveries.OPEN}
    for state, n in session.execute(
        select(Delivery.status, func.count())
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status.in_((I.SENDING, I.PAUSED)), Delivery.status.in_(deliveries.OPEN))
        .group_by(Delivery.status)
    ):
        waiting[str(state)] = n
    next_retry = session.scalar(
        select(func.min(Delivery.next_attempt_at))
        .join(Issue, Issue.id == Delivery.issue_id)
        .where(Issue.status == I.SENDING, Delivery.status == D.FAILED_TEMPORARY)
    )
    uncertain = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.status == D.UNCERTAIN)
    )
    imports = session.scalar(
        select(func.count())
        .select_from(SubscriberImport)
        .where(SubscriberImport.status.in_(("queued", "running")))
    )
    return {
        "issues": issues,
        "waiting": waiting,
        "next_retry": next_retry,
        "uncertain": uncertain or 0,
        "imports": imports or 0,
    }


def next_runs(session: Session, now: datetime | None = None, limit: int = 5) -> list[dict]:
    """What will go out next: active schedules' next firing and issues set to a time."""
    now = now or utcnow()
    out = []
    for schedule in session.scalars(select(Schedule).where(Schedule.active.is_(True))):
        upcoming = schedules.next_runs(schedule, now, 1)
        if upcoming:
            _spec, tz = schedules.spec_of(schedule)
            out.append({"at": upcoming[0].astimezone(UTC), "schedule": schedule, "issue": None,
                        "local": schedules.local_label(upcoming[0], tz)})
    for issue in session.scalars(
        select(Issue)
        .where(Issue.status == I.SCHEDULED, Issue.send_at.is_not(None))
        .order_by(Issue.send_at)
        .limit(limit)
    ):
        out.append({"at": issue.send_at, "schedule": None, "issue": issue, "local": None})
    out.sort(key=lambda r: r["at"])
    return out[:limit]


@dataclass(frozen=True)
class Warning:
    kind: str  # postal_address | dkim | bounces | complaints | paused | uncertain | feed |
    # webhook
    message: str
    issue_id: int | None = None
    # The newsletter of the issue it is about, named in the message from `name_at` on (so
    # the dashboard can link that name); None for warnings about no issue.
    newsletter_slug: str | None = None
    newsletter_name: str | None = None
    name_at: int | None = None


def _about_issue(kind: str, issue: Issue | None, issue_id: int, text: str) -> Warning:
    """A warning about an issue, `text` with `{issue}` (or `{Issue}`, at a sentence's start)
    where it is named with its newsletter: "issue 7 of The Evening". With several
    newsletters a bare number leaves the operator guessing which one's issue it is."""
    marker = "{Issue}" if "{Issue}" in text else "{issue}"
    head, _, tail = text.partition(marker)
    label = f"{marker[1]}ssue {issue_id}"
    newsletter = issue.newsletter if issue is not None else None
    if newsletter is None:  # only rows made by hand; the services always set it
        return Warning(kind, head + label + tail, issue_id)
    head += label + " of "
    return Warning(kind, head + newsletter.name + tail, issue_id, newsletter.slug,
                   newsletter.name, len(head))


def warnings(
    session: Session, settings: Settings, by_newsletter: list[list[dict]] | None = None
) -> list[Warning]:
    """What an operator should fix or look at, most important first. `by_newsletter`: the
    last issues to judge bounces by (default last_issues_by_newsletter; [] judges none)."""
    out: list[Warning] = []
    if not settings.postal_address:
        out.append(Warning("postal_address", "No postal address is set (MAILER_POSTAL_ADDRESS): "
                           "the law in many countries requires one in every newsletter."))
    if not (settings.dkim_key_file or settings.dkim_ed25519_key_file):
        out.append(Warning("dkim", "Mail is not DKIM-signed (MAILER_DKIM_KEY_FILE): many "
                           "mailbox providers will file it as spam."))
    for recent in last_issues_by_newsletter(session) if by_newsletter is None else by_newsletter:
        out += _bounce_warnings(session, settings, recent)
    for issue in session.scalars(select(Issue).where(Issue.status == I.PAUSED).order_by(Issue.id)):
        out.append(_about_issue("paused", issue, issue.id, "{Issue} is paused: " + (
            issue.status_reason or "paused by an operator.")))
    for issue_id, n in session.execute(
        select(Delivery.issue_id, func.count())
        .where(Delivery.status == D.UNCERTAIN)
        .group_by(Delivery.issue_id)
        .order_by(Delivery.issue_id)
    ):
        out.append(_about_issue(
            "uncertain", session.get(Issue, issue_id), issue_id,
            f"{{Issue}}: {n} message(s) may or may not have been delivered (a worker stopped "
            "while sending)."))
    for feed in session.scalars(
        select(Feed).where(
            Feed.last_error.is_not(None),
            (Feed.last_success_at.is_(None)) | (Feed.last_checked_at > Feed.last_success_at),
        )
    ):
        out.append(Warning("feed", f"The feed {feed.url} cannot be read: {feed.last_error}"))
    for endpoint in session.scalars(
        select(HookEndpoint).where(HookEndpoint.enabled.is_(False),
                                   HookEndpoint.failing_since.is_not(None))
    ):
        out.append(Warning("webhook", f"The webhook endpoint {endpoint.url} was disabled: "
                           f"{endpoint.disabled_reason} Its events wait until it is enabled "
                           "again (Webhooks)."))
    return out


def _bounce_warnings(session: Session, settings: Settings, recent: list[dict]) -> list[Warning]:
    """The bounce and complaint warnings of one newsletter's last issues (newest first)."""
    found: list[Warning] = []
    trend = bounce_trend(recent)
    if trend is not None:
        latest, before = trend
        issue = _judged(recent)[0]["issue"]  # the issue the latest rate is of
        if before is not None and latest > BOUNCE_FLOOR and latest > 1.5 * before:
            found.append(_about_issue(
                "bounces", issue, issue.id,
                f"The bounce rate is rising: {latest:.1%} of the last issue's messages bounced "
                f"({{issue}}), against {before:.1%} before."))
        elif latest > BOUNCE_HIGH:
            found.append(_about_issue(
                "bounces", issue, issue.id,
                f"{latest:.1%} of the last issue's messages bounced ({{issue}}): check the "
                "addresses you imported."))
    if recent:
        last = recent[0]["issue"]
        counts = bounce_reports.issue_counts(session, last.id)
        if counts["complaints_rate"] * 100 > settings.complaint_warn_percent:
            found.append(_about_issue(
                "complaints", last, last.id,
                f"{counts['complaints_rate']:.2%} of the readers of {{issue}} reported it as "
                f"spam ({counts['complaints']} of {counts['messages']}); mailbox providers "
                f"start filtering above {settings.complaint_warn_percent:g} %."))
        if counts["bounced_hard_rate"] * 100 > settings.hard_bounce_warn_percent:
            found.append(_about_issue(
                "bounces", last, last.id,
                f"{counts['bounced_hard_rate']:.2%} of the messages of {{issue}} bounced for "
                f"good ({counts['bounced_hard']} of {counts['messages']}), over "
                f"{settings.hard_bounce_warn_percent:g} %: check where these addresses came "
                "from."))
    return found


# --- one issue ------------------------------------------------------------------------------


def audience(session: Session, issue: Issue, settings: Settings) -> dict:
    """Who would get the issue if it were sent now: readers, and readers left out because
    none of the issue's articles is in their sections (the delivery engine's own rules)."""
    readers = no_items = 0
    has_items: dict[str, bool] = {}
    for sections, n in session.execute(
        select(Subscription.sections, func.count())
        .where(deliveries.audience(session, issue))
        .group_by(Subscription.sections)
    ):
        key = deliveries.variant_key(sections, issue.audience_sections)
        if key is None:
            continue
        if key not in has_items:
            variant = build_variant(session, issue, key, settings, lambda item: item.url)
            has_items[key] = bool(variant.items)
        if has_items[key]:
            readers += n
        else:
            no_items += n
    return {"readers": readers, "no_items": no_items}


def clicks_per_item(session: Session, issue_id: int) -> list[dict]:
    """Every item readers got, in reading order, with counted clicks and readers who clicked."""
    counted = and_(Click.item_id == IssueItem.id, Click.counted.is_(True))
    rows = session.execute(
        select(IssueItem.id, IssueItem.section, IssueItem.position, IssueItem.url, Article.title,
               func.count(Click.id), func.count(distinct(Click.delivery_id)))
        .join(Article, Article.id == IssueItem.article_id)
        .outerjoin(Click, counted)
        .where(IssueItem.issue_id == issue_id, IssueItem.excluded.is_(False))
        .group_by(IssueItem.id, IssueItem.section, IssueItem.position, IssueItem.url,
                  Article.title)
        .order_by(IssueItem.section, IssueItem.position, IssueItem.id)
    )
    return [
        {"id": i, "section": str(section), "position": position, "url": url,
         "title": title or url, "clicks": clicks, "readers": readers}
        for i, section, position, url, title, clicks, readers in rows
    ]


def bounces(session: Session, issue_id: int, offset: int = 0, limit: int = 50):
    """(rows, total): the bounces and complaints reported about the issue's messages (our
    own SMTP server's refusals among them), with the server's words."""
    where = BounceEvent.issue_id == issue_id
    total = session.scalar(select(func.count()).select_from(BounceEvent).where(where)) or 0
    rows = session.execute(
        select(BounceEvent.delivery_id, Subscriber.id, Subscriber.email, BounceEvent.status,
               BounceEvent.diagnostic, BounceEvent.at, BounceEvent.kind, BounceEvent.source)
        .outerjoin(Subscriber, Subscriber.id == BounceEvent.subscriber_id)
        .where(where)
        .order_by(BounceEvent.at, BounceEvent.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return [
        {"delivery": d, "subscriber": s, "email": email, "at": at, "kind": str(kind),
         "source": source, "error": _words(status, diagnostic)}
        for d, s, email, status, diagnostic, at, kind, source in rows
    ], total


def _words(status: str | None, diagnostic: str | None) -> str:
    """The server's words, with the status code in front unless they already say it."""
    words = diagnostic or ""
    if status and status not in words:
        words = f"{status} {words}".strip()
    return words


def opens(session: Session, issue_id: int) -> int:
    """Readers whose open pixel loaded (only counted with MAILER_OPEN_PIXEL=on)."""
    return session.scalar(
        select(func.count()).select_from(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.opened_at.is_not(None))
    ) or 0


def candidates(session: Session, issue_id: int, q: str = "", limit: int = 10) -> list[Article]:
    """Articles an editor may add to an issue: not in it yet, matching `q`, newest first."""
    in_issue = select(IssueItem.article_id).where(IssueItem.issue_id == issue_id)
    stmt = select(Article).where(Article.id.not_in(in_issue))
    if q.strip():
        escaped = q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(func.lower(Article.title).like(f"%{escaped}%", escape="\\"))
    stmt = stmt.order_by(Article.published_at.desc(), Article.id.desc()).limit(limit)
    return list(session.scalars(stmt))

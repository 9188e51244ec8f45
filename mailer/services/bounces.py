"""Bounces and complaints: who a report is about, what it does to the reader, recorded once.

Every way in (the MTA's pipe, the IMAP poller, the providers' webhooks, our own SMTP
answers) turns what it received into `mailer.bounces.Report`s and calls record(), which:

1. drops reports the parser classified as ignored (delayed, relayed, auto-replies, ...);
2. finds the reader, most exact first: the delivery the way in already knows, a signed
   delivery token (VERP address, our header) that verifies, our own Message-ID whose keyed
   tag verifies; else the report's addresses, matched to readers we mailed in the last
   MAILER_BOUNCE_MATCH_DAYS. A forged token, an erased reader or nobody we mailed: ignored;
3. inserts the event under its UNIQUE key (INSERT ... ON CONFLICT DO NOTHING): the same
   report twice, even from two processes at once, is recorded once and acted on once;
4. applies the policy (Mailman's) to the reader's row, locked for the decision:
   - hard (permanent): `bounced` at once;
   - soft (temporary): the score goes up by one, at most once a day; it starts again at 1
     when the last counted bounce is older than MAILER_BOUNCE_STALE_DAYS; at
     MAILER_BOUNCE_SOFT_LIMIT the reader is `bounced`;
   - complaint: `complained` at once and the address suppressed (imports never bring it
     back; only a signup made after the complaint, then confirmed, does).
   Only active and pending readers change status: an unsubscribed reader stays
   unsubscribed, a complained one stays complained. The event is kept either way (history).

Like every service it never commits: the caller's transaction makes the report, the
event and the reader's new state visible together, or none of them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import distinct, func, insert, select, update
from sqlalchemy.orm import Session

from mailer.bounces.report import Kind, Report, Source
from mailer.clock import utcnow
from mailer.config import Settings
from mailer.errors import Conflict, InvalidTransition
from mailer.models import (
    BounceEvent,
    BounceKind,
    BounceReportCount,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
)
from mailer.services import hooks
from mailer.services import issue_states as states
from mailer.services.subscriptions import suppress
from mailer.tokens import BOUNCE, MESSAGE_ID, SUPPRESSION, BadToken, Tokens

log = logging.getLogger(__name__)

RECORDED, IGNORED, DUPLICATE = "recorded", "ignored", "duplicate"
# The readers a report may still change: unsubscribed and complained are the person's own
# choice and stronger than any bounce; a bounced reader keeps its first story.
CHANGEABLE = (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING)
KEY_MAX = 200
DETAIL_MAX = 1000
ADDRESSES_MAX = 20  # a report naming more is about a list, not a reader: the first ones
_OUR_MESSAGE_ID = re.compile(r"<?\s*(\d{1,19})\.([0-9a-f]{10})@[^>\s]+\s*>?\Z")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Outcome:
    """What record() did: `recorded`, `ignored` (with the reason) or `duplicate`."""

    result: str
    reason: str | None = None
    subscriber_id: int | None = None
    issue_id: int | None = None
    event_id: int | None = None
    # The reader's new status when this report changed it (bounced, complained), else None.
    changed_to: SubscriberStatus | None = None


@dataclass(frozen=True)
class _Target:
    subscriber_id: int
    delivery_id: int | None = None
    issue_id: int | None = None


@lru_cache(maxsize=4)
def _tokens(secret_key: str) -> Tokens:
    return Tokens(secret_key)


def delivery_of_token(settings: Settings, token: str) -> int | None:
    """The delivery id a signed bounce token carries, or None if it does not verify."""
    try:
        value = _tokens(settings.secret_key).unsign(BOUNCE, token.strip())
    except BadToken:
        return None
    return int(value) if value.isdigit() else None


def delivery_of_message_id(settings: Settings, message_id: str) -> int | None:
    """The delivery an issue's Message-ID names (`<id.tag@domain>`), if the tag is ours."""
    m = _OUR_MESSAGE_ID.match(message_id.strip())
    if not m:
        return None
    expected = _tokens(settings.secret_key).keyed_hash(MESSAGE_ID, m.group(1))[:10]
    return int(m.group(1)) if hmac.compare_digest(expected, m.group(2)) else None


def status_code(text: str | None) -> str | None:
    """The enhanced status code (RFC 3463) in a server's answer, e.g. '5.1.1'."""
    m = _STATUS.search(text or "")
    return m.group(0) if m else None


def record(
    session: Session,
    settings: Settings,
    report: Report,
    *,
    now: datetime | None = None,
    tally: Counter[str] | None = None,
) -> Outcome:
    """Identify the reader, record the report once and apply the policy (module docstring).

    The outcome is counted for /metrics at once, or added to `tally` when the caller
    records many reports in one transaction and counts them at the end (count_tally):
    counting as it goes would lock the counter rows in the order the outcomes come, and
    two such transactions could wait on each other.
    """
    outcome = _record(session, settings, report, now or utcnow())
    if tally is None:
        count(session, report.source, outcome.result)
    else:
        tally[outcome.result] += 1
    return outcome


def record_many(
    session: Session, settings: Settings, source: Source | str, reports: list[Report], *,
    now: datetime | None = None,
) -> list[Outcome]:
    """Record several reports of one way in, in the caller's one transaction, in the order
    given; their outcomes are counted at the end (count_tally), not as they come."""
    tally: Counter[str] = Counter()
    outcomes = [record(session, settings, r, now=now, tally=tally) for r in reports]
    count_tally(session, source, tally)
    return outcomes


def count_tally(session: Session, source: Source | str, tally: Counter[str]) -> None:
    """Count a transaction's outcomes, one row each, always in the same order."""
    for result in sorted(tally):
        count(session, source, result, tally[result])


def count(session: Session, source: Source | str, result: str, n: int = 1) -> None:
    """Add to mailer_bounce_reports_total{source, result}; `refused` is for the webhooks'
    requests turned away (bad signature, replay) before any report was read."""
    statement = _insert_for(session)(BounceReportCount).values(
        source=str(source), result=result, n=n
    )
    session.execute(statement.on_conflict_do_update(
        index_elements=["source", "result"],
        set_={"n": BounceReportCount.n + statement.excluded.n},
    ))


def _insert_for(session: Session):
    """INSERT with ON CONFLICT for the database in use (both speak it)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert


def _record(session: Session, settings: Settings, report: Report, now) -> Outcome:
    if report.kind == Kind.IGNORED:
        return _ignored(report, report.reason or "not a bounce or complaint")
    target = _identify(session, settings, report, now)
    if isinstance(target, str):
        return _ignored(report, target)

    at = min(report.at or now, now)  # a provider's clock ahead of ours is not the future
    event_id = _insert_event(session, report, target, at, now)
    if event_id is None:
        return Outcome(DUPLICATE, "recorded before", target.subscriber_id, target.issue_id)

    # Locked for the decision (PostgreSQL; SQLite has one writer at a time anyway): two
    # reports about one reader from two processes are applied one after the other.
    sub = session.scalar(
        select(Subscriber)
        .where(Subscriber.id == target.subscriber_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    changed = _apply(session, settings, sub, report, at, now)
    if target.issue_id is not None and report.kind in (Kind.HARD, Kind.COMPLAINT):
        pause_if_over(session, settings, target.issue_id)
    return Outcome(RECORDED, None, sub.id, target.issue_id, event_id, changed)


def _ignored(report: Report, reason: str) -> Outcome:
    log.info("bounce report %s from %s ignored: %s", report.key[:80], report.source, reason)
    return Outcome(IGNORED, reason)


def _identify(session: Session, settings: Settings, report: Report, now) -> _Target | str:
    """The reader (and delivery) a report is about, or the reason it is about nobody."""
    delivery_id = report.delivery_id
    if delivery_id is None and report.token:
        delivery_id = delivery_of_token(settings, report.token)
        if delivery_id is None:
            return "forged or unknown bounce token"
    if delivery_id is None and report.message_id:
        delivery_id = delivery_of_message_id(settings, report.message_id)
    if delivery_id is not None:
        row = session.execute(
            select(Delivery.subscriber_id, Delivery.issue_id).where(Delivery.id == delivery_id)
        ).first()
        if row is None:
            return f"no delivery {delivery_id}"
        if row.subscriber_id is None:
            return "the reader erased their data"
        return _Target(row.subscriber_id, delivery_id, row.issue_id)
    return _by_address(session, settings, report, now)


def _by_address(session: Session, settings: Settings, report: Report, now) -> _Target | str:
    """The first address the report names that belongs to a reader we mailed recently: an
    issue (its latest delivery), or a confirmation or welcome mail."""
    wanted: list[str] = []
    for raw in report.addresses:
        address = raw.strip().strip("<>").lower()
        if "@" in address and address not in wanted and len(address) <= 320:
            wanted.append(address)
        if len(wanted) == ADDRESSES_MAX:
            break
    if not wanted:
        return "names no recipient"
    cutoff = now - timedelta(days=settings.bounce_match_days)
    readers = {
        r.email: r
        for r in session.execute(
            select(
                Subscriber.id, Subscriber.email, Subscriber.confirm_requested_at,
                Subscriber.confirmed_at,
            ).where(Subscriber.email.in_(wanted))
        )
    }
    for address in wanted:
        reader = readers.get(address)
        if reader is None:
            continue
        last = session.execute(
            select(Delivery.id, Delivery.issue_id)
            .where(
                Delivery.subscriber_id == reader.id,
                Delivery.sent_at.is_not(None),
                Delivery.sent_at >= cutoff,
            )
            .order_by(Delivery.sent_at.desc(), Delivery.id.desc())
            .limit(1)
        ).first()
        if last is not None:
            return _Target(reader.id, last.id, last.issue_id)
        if any(t is not None and t >= cutoff
               for t in (reader.confirm_requested_at, reader.confirmed_at)):
            return _Target(reader.id)
    return "about nobody we mailed recently"


def _key(report: Report) -> str:
    # A report mailed to us is the same report whether the MTA piped it, delivered it over
    # LMTP or the poller fetched it from the mailbox; a provider's event ids are its own.
    prefix = ("mail" if report.source in (Source.PIPE, Source.LMTP, Source.IMAP)
              else str(report.source))
    key = f"{prefix}:{report.key}"
    if len(key) <= KEY_MAX:
        return key
    return f"{prefix}:sha256:{hashlib.sha256(report.key.encode()).hexdigest()}"


def _insert_event(session: Session, report: Report, target: _Target, at, now) -> int | None:
    """The event's id, or None when a report with its key is already recorded."""
    dialect_insert = _insert_for(session)
    diagnostic = (report.diagnostic or "").strip()
    statement = (
        dialect_insert(BounceEvent)
        .values(
            key=_key(report),
            subscriber_id=target.subscriber_id,
            delivery_id=target.delivery_id,
            issue_id=target.issue_id,
            kind=BounceKind(report.kind.value),
            source=str(report.source),
            status=(report.status or status_code(diagnostic) or None),
            diagnostic=diagnostic[:DETAIL_MAX] or None,
            at=at,
            received_at=now,
        )
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(BounceEvent.id)
    )
    return session.execute(statement).scalar()


def _apply(session: Session, settings: Settings, sub: Subscriber, report: Report, at, now):
    """The policy on one locked reader; the status it moved to, or None."""
    detail = _detail(report)
    if report.kind == Kind.COMPLAINT:
        suppress(session, _tokens(settings.secret_key).keyed_hash(SUPPRESSION, sub.email),
                 "complained")
        if sub.status == SubscriberStatus.COMPLAINED:
            return None
        sub.status, sub.complained_at = SubscriberStatus.COMPLAINED, now
        _history(session, sub, "complained", detail, now)
        _tell(session, sub, "subscriber.complained", report, now)
        return SubscriberStatus.COMPLAINED

    if report.kind == Kind.HARD:
        sub.last_bounce_at = max(sub.last_bounce_at or at, at)
        return _bounce(session, sub, detail, now, report)

    # Soft: counted at most once a day; a score older than the stale period starts again.
    last = sub.last_bounce_at
    if last is None or at - last > timedelta(days=settings.bounce_stale_days):
        sub.bounce_score, sub.last_bounce_at = 1, at
    elif at - last >= timedelta(days=1):
        sub.bounce_score, sub.last_bounce_at = sub.bounce_score + 1, at
    else:
        return None  # already counted today
    if sub.bounce_score >= settings.bounce_soft_limit:
        return _bounce(
            session, sub, f"{sub.bounce_score} temporary bounces; the last: {detail}", now,
            report,
        )
    return None


def _bounce(session: Session, sub: Subscriber, detail: str, now,
            report: Report) -> SubscriberStatus | None:
    if sub.status not in CHANGEABLE:
        return None
    sub.status, sub.bounced_at = SubscriberStatus.BOUNCED, now
    _history(session, sub, "bounced", detail, now)
    _tell(session, sub, "subscriber.bounced", report, now)
    return SubscriberStatus.BOUNCED


def _tell(session: Session, sub: Subscriber, event_type: str, report: Report, now) -> None:
    """The webhook event, in the transaction that changed the reader (not the server's
    words: they may quote the address)."""
    hooks.emit(session, event_type,
               hooks.subscriber_data(sub, bounce={"kind": str(report.kind),
                                                  "source": report.source,
                                                  "status": report.status}),
               subscriber_id=sub.id, now=now)


def _detail(report: Report) -> str:
    words = (report.diagnostic or report.status or str(report.kind)).strip()
    return f"{report.source}: {words}"[:DETAIL_MAX]


def _history(session: Session, sub: Subscriber, kind: str, detail: str, now) -> None:
    session.execute(
        insert(SubscriberEvent).values(
            subscriber_id=sub.id, at=now, kind=kind, detail=detail[:DETAIL_MAX]
        )
    )


# --- what the reports add up to -------------------------------------------------------------


def issue_counts(session: Session, issue_id: int) -> dict:
    """An issue's bounced_hard, bounced_soft and complaints (readers, each counted once per
    kind) and their rates over the messages it sent."""
    rows = dict(
        session.execute(
            select(BounceEvent.kind, func.count(distinct(BounceEvent.subscriber_id)))
            .where(BounceEvent.issue_id == issue_id)
            .group_by(BounceEvent.kind)
        ).all()
    )
    # Messages that reached a server: accepted (sent) or refused there (failed, tried).
    sent = session.scalar(
        select(func.count()).where(
            Delivery.issue_id == issue_id,
            (Delivery.status == DeliveryStatus.SENT)
            | ((Delivery.status == DeliveryStatus.FAILED_PERMANENT) & (Delivery.attempts > 0)),
        )
    ) or 0
    counts = {
        "bounced_hard": rows.get(BounceKind.HARD, 0),
        "bounced_soft": rows.get(BounceKind.SOFT, 0),
        "complaints": rows.get(BounceKind.COMPLAINT, 0),
    }
    rates = {f"{k}_rate": (round(v / sent, 6) if sent else 0.0) for k, v in counts.items()}
    return {**counts, **rates, "messages": sent}


def pause_if_over(session: Session, settings: Settings, issue_id: int) -> bool:
    """Pause an issue still sending whose complaint or hard-bounce rate passed its limit
    (after MAILER_BOUNCE_PAUSE_MIN messages): one bad list must not burn the sending domain.
    True if this call paused it."""
    status = session.scalar(select(Issue.status).where(Issue.id == issue_id))
    if status != IssueStatus.SENDING:
        return False
    counts = issue_counts(session, issue_id)
    if counts["messages"] < settings.bounce_pause_min:
        return False
    reason = None
    if counts["complaints_rate"] * 100 > settings.complaint_pause_percent:
        reason = (f"{counts['complaints']} complaints in {counts['messages']} messages "
                  f"({counts['complaints_rate']:.2%}, over "
                  f"{settings.complaint_pause_percent:g} %)")
    elif counts["bounced_hard_rate"] * 100 > settings.hard_bounce_pause_percent:
        reason = (f"{counts['bounced_hard']} hard bounces in {counts['messages']} messages "
                  f"({counts['bounced_hard_rate']:.2%}, over "
                  f"{settings.hard_bounce_pause_percent:g} %)")
    if reason is None:
        return False
    try:
        states.transition(session, issue_id, states.PAUSE,
                          status_reason=f"Paused automatically: {reason}."[:1000])
    except InvalidTransition:
        return False  # paused or finished meanwhile
    log.warning("issue %s paused: %s", issue_id, reason)
    return True


def history(session: Session, subscriber_id: int, limit: int = 200) -> list[dict]:
    """A reader's bounces and complaints, newest first: kind, at, source, detail."""
    events = session.scalars(
        select(BounceEvent)
        .where(BounceEvent.subscriber_id == subscriber_id)
        .order_by(BounceEvent.at.desc(), BounceEvent.id.desc())
        .limit(limit)
    )
    return [
        {
            "kind": str(e.kind),
            "at": e.at.isoformat(),
            "source": e.source,
            "detail": " ".join(p for p in (e.status, e.diagnostic) if p) or None,
            "issue": e.issue_id,
        }
        for e in events
    ]


def reactivate(session: Session, sub: Subscriber, by: str, now: datetime | None = None) -> None:
    """An operator's decision that a bounced address works again: active, score cleared.
    A complained reader is not reactivated by anyone but themselves (signup, confirm)."""
    now = now or utcnow()
    done = session.execute(
        update(Subscriber)
        .where(Subscriber.id == sub.id, Subscriber.status == SubscriberStatus.BOUNCED)
        .values(status=SubscriberStatus.ACTIVE, bounce_score=0, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not done:
        raise Conflict(
            f"Only a bounced reader can be reactivated; this one is {sub.status}."
            + (" A reader who complained comes back by signing up and confirming again."
               if sub.status == SubscriberStatus.COMPLAINED else "")
        )
    session.refresh(sub)
    _history(session, sub, "reactivated", f"by {by}"[:DETAIL_MAX], now)

"""Sending an issue: the frozen audience, hand-out to workers, control, status and the sweeper.

Called by the CLI, the API, the console and the scheduler, each owning its transaction:

- start_send(session, issue_id, settings=...) -> StartResult: draft/scheduled → sending;
  renders each variant once (render = services.render.render_variant or a stand-in) and
  inserts one pending delivery per reader of the audience;
- pause(session, issue_id), resume(session, issue_id, settings), cancel(session, issue_id);
- uncertain_rows(session, issue_id), resend_uncertain(session, issue_id, settings) -> count:
  what may or may not have arrived, and an operator's deliberate re-send;
- status(session, issue_id) -> dict: counts per delivery state, rate, ETA;
- sweep(session, settings) -> SweepResult: the tick's housekeeping (below).

Whatever hands out batches (start, resume, re-send, sweep) records them on the session
(services.after_commit): the workers get them once the caller's transaction commits, and
never if it rolls back.

What the delivery columns mean (the exactly-once protocol, with services.delivery_batches):

- pending: not handed to any task; next_attempt_at = not before (NULL = now);
- sending: handed to a task at claimed_at. claimed_by says who holds it:
  "q:<batch token>" while the task waits in the broker, "q:<batch token>:<worker>" once a
  worker process runs the task but has not tried the row (both safe to hand out again),
  "t:<batch token>:<worker>" once its SMTP transaction has begun. <worker> is the process
  name of services.workers, which keeps a heartbeat;
- failed_temporary: next_attempt_at = when to retry (backoff); sent, failed_permanent and
  uncertain are final unless an operator re-sends uncertain rows.

Handing out is claiming: dispatch() moves a batch of pending rows to sending in one
conditional UPDATE, so no row is ever in two batches, and a second copy of a task finds its
rows already tried. The sweeper, run every tick (in every worker and in beat, one at a
time): rows held by a worker whose heartbeat lapsed (MAILER_WORKER_TIMEOUT, 30 s) are
released at once, and rows handed out longer than the lease (a task lost with the broker, a
worker that never beat) likewise: back to pending if never tried, `uncertain` if tried (the
server may have accepted them: never re-sent by itself). Due retries return to pending;
idle issues get their batches; issues with nothing pending, sending or failed_temporary are
finished; an issue that could send nothing for a whole lease because a server is
unreachable is paused.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.config import Settings
from mailer.db import UTCDateTime
from mailer.errors import InvalidTransition, NotFound
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    IssueVariant,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    sections_key,
    sections_list,
)
from mailer.services import after_commit, bounces, looks, newsletters, workers
from mailer.services import issue_states as states
from mailer.services.render import render_variant

# The task that runs one Batch (mailer.tasks.delivery.send_batch).
SEND_BATCH = "mailer.send_batch"
# An issue is finished only when none of its rows is in one of these states.
OPEN = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.FAILED_TEMPORARY)
FREEZE_PAGE = 10_000
MAY_HAVE_ARRIVED = "The worker stopped during the SMTP transaction; it may have been delivered."

# render(session, issue, sections, settings): one variant's (subject, html, text), or None
# when readers of those sections get no items.
Render = Callable[[Session, Issue, str, Settings], "tuple[str, str, str] | None"]


@dataclass
class StartResult:
    issue_id: int
    deliveries: int
    skipped_no_items: int
    variants: int
    batches: list[Batch] = field(default_factory=list)  # handed to workers at the commit


@dataclass
class SweepResult:
    requeued: int = 0
    uncertain: int = 0
    retried: int = 0
    finished: int = 0
    paused: int = 0
    batches: dict[int, list[Batch]] = field(default_factory=dict)  # issue -> batches handed out


def variant_key(reader_sections: str, issue_sections: str) -> str | None:
    """The section set a reader gets of an issue ('' = all), or None when they share none."""
    if not issue_sections:
        return reader_sections
    if not reader_sections:
        return issue_sections
    return (
        sections_key(set(sections_list(reader_sections)) & set(sections_list(issue_sections)))
        or None
    )


def _issue(session: Session, issue_id: int) -> Issue:
    issue = session.get(Issue, issue_id)
    if issue is None:
        raise NotFound(f"There is no issue {issue_id}.")
    return issue


# --- start ------------------------------------------------------------------------------


def newsletter_of(session: Session, issue: Issue) -> int:
    """The newsletter an issue belongs to; an issue made before issues named one belongs to
    the first."""
    if issue.newsletter_id is not None:
        return issue.newsletter_id
    return newsletters.first(session).id


def audience(session: Session, issue: Issue):
    """Who gets an issue (a condition on Subscriber and Subscription together): an active
    person whose subscription to the issue's newsletter is active, with the issue's
    frequency. Sections are matched on the subscription too (Subscription.sections)."""
    return (
        (Subscription.subscriber_id == Subscriber.id)
        & (Subscription.newsletter_id == newsletter_of(session, issue))
        & (Subscription.status == SubscriptionStatus.ACTIVE)
        & (Subscription.frequency == issue.audience_frequency)
        & (Subscriber.status == SubscriberStatus.ACTIVE)
    )


def start_send(
    session: Session,
    issue_id: int,
    *,
    settings: Settings,
    render: Render = render_variant,
    now: datetime | None = None,
) -> StartResult:
    """Start sending: freeze the audience into pending deliveries, variants rendered once,
    and hand the first batches to the workers when the caller commits.

    Two clicks or two editors at once start one send: the second gets InvalidTransition.
    """
    now = now or utcnow()
    states.transition(
        session, issue_id, states.START, started_at=now, finished_at=None, status_reason=None
    )
    issue = _issue(session, issue_id)
    # The look its readers get, kept: changing the newsletter's look later never changes
    # this issue in the archive or in a re-render.
    looks.freeze(session, issue, settings)

    # The distinct section sets of the audience (a handful), with their sizes.
    by_sections = {
        sections: n
        for sections, n in session.execute(
            select(Subscription.sections, func.count())
            .where(audience(session, issue))
            .group_by(Subscription.sections)
        )
    }
    variants: dict[str, IssueVariant] = {}
    reader_variant: dict[str, IssueVariant] = {}
    for reader_sections in sorted(by_sections):
        key = variant_key(reader_sections, issue.audience_sections)
        if key is None:
            continue  # shares no section with this issue: not in its audience
        if key not in variants:
            rendered = render(session, issue, key, settings)
            if rendered is None:
                v = IssueVariant(
                    issue_id=issue.id,
                    sections=key,
                    subject="",
                    html="",
                    text="",
                    empty=True,
                    readers=0,
                )
            else:
                subject, html, text = rendered
                v = IssueVariant(
                    issue_id=issue.id,
                    sections=key,
                    subject=subject,
                    html=html,
                    text=text,
                    empty=False,
                    readers=0,
                )
            session.add(v)
            variants[key] = v
        reader_variant[reader_sections] = variants[key]
        variants[key].readers += by_sections[reader_sections]
    session.flush()

    sendable = {k: v.id for k, v in reader_variant.items() if not v.empty}
    skipped = sum(v.readers for v in variants.values() if v.empty)
    total = _freeze(session, issue, sendable, now) if sendable else 0
    if total == 0:
        reason = (
            "No reader matched the audience."
            if not skipped
            else (f"Nothing to send: the {skipped} readers of this audience have no items.")
        )
        states.transition(session, issue_id, states.FINISH, finished_at=now, status_reason=reason)
        return StartResult(issue_id, 0, skipped, len(variants))
    batches = hand_out(session, issue_id, settings, now=now)
    return StartResult(issue_id, total, skipped, len(variants), batches)


def _freeze(session: Session, issue: Issue, sendable: dict[str, int], now: datetime) -> int:
    """INSERT ... SELECT one page of readers at a time, by id: nothing held in memory."""
    variant_of = case(sendable, value=Subscription.sections)
    where = audience(session, issue) & Subscription.sections.in_(list(sendable))
    columns = ["issue_id", "subscriber_id", "variant_id", "status", "attempts", "created_at"]
    last = 0
    while True:
        upper = session.scalar(
            select(Subscriber.id)
            .where(where, Subscriber.id > last)
            .order_by(Subscriber.id)
            .offset(FREEZE_PAGE - 1)
            .limit(1)
        )
        below = (Subscriber.id <= upper) if upper is not None else true()
        page = where & (Subscriber.id > last) & below
        rows = select(
            literal(issue.id),
            Subscriber.id,
            variant_of,
            literal(DeliveryStatus.PENDING.value),
            literal(0),
            literal(now, UTCDateTime()),
        ).where(page)
        session.execute(insert(Delivery).from_select(columns, rows))
        if upper is None:
            break
        last = upper
    if session.get_bind().dialect.name == "postgresql":
        # Thousands of rows just appeared: without fresh statistics the planner would scan
        # the issue's rows for every claim instead of using the primary key.
        session.execute(text("ANALYZE deliveries"))
    # (INSERT ... SELECT reports no reliable rowcount on every driver.)
    return session.scalar(select(func.count()).where(Delivery.issue_id == issue.id))


# --- hand-out ---------------------------------------------------------------------------


def batch_size(settings: Settings) -> int:
    """Rows per task; smaller under a low rate limit, so a batch finishes within its lease."""
    size = settings.send_batch
    if settings.rate_limit:
        size = min(size, max(20, int(settings.rate_limit * 30)))
    return size


@dataclass(frozen=True)
class Batch:
    """Rows handed to one task: claimed_by = "q:" + token until the task tries them."""

    token: str
    ids: list[int]
    # A batch hands out the next one when it starts, keeping the window full; a retry of
    # rows the server never saw does not, or every retry round would widen the window.
    chain: bool = True


QUEUED, TRIED = "q:", "t:"


def new_token() -> str:
    return secrets.token_hex(8)


DELIVERIES = Delivery.__table__
# One statement per batch: the next `size` due pending rows above `after` become this
# batch's, in id order. SKIP LOCKED lets two dispatchers (two chains, the sweeper) take
# different rows at once instead of waiting on each other (PostgreSQL; SQLite serializes).
_NEXT = (
    select(DELIVERIES.c.id)
    .where(
        DELIVERIES.c.issue_id == bindparam("b_issue"),
        DELIVERIES.c.status == DeliveryStatus.PENDING,
        DELIVERIES.c.id > bindparam("b_after"),
        or_(
            DELIVERIES.c.next_attempt_at.is_(None),
            DELIVERIES.c.next_attempt_at <= bindparam("b_now"),
        ),
    )
    .order_by(DELIVERIES.c.id)
    .limit(bindparam("b_size"))
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_HAND_OUT = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id.in_(_NEXT))
    .values(
        status=DeliveryStatus.SENDING, claimed_by=bindparam("b_by"), claimed_at=bindparam("b_now")
    )
    .returning(DELIVERIES.c.id)
)


def dispatch(
    session, issue_id: int, batches: int, size: int, *, after: int = 0, now=None
) -> list[Batch]:
    """Claim up to `batches` x `size` due pending rows (ids above `after`) for new tasks.

    `session` may be a Session or a Connection (the batch runner's).
    """
    now = now or utcnow()
    out = []
    for _ in range(batches):
        token = new_token()
        params = {
            "b_issue": issue_id,
            "b_after": after,
            "b_now": now,
            "b_size": size,
            "b_by": QUEUED + token,
        }
        ids = sorted(session.execute(_HAND_OUT, params).scalars().all())
        if not ids:
            break
        out.append(Batch(token, ids))
        after = ids[-1]
    return out


def hand_out(
    session: Session, issue_id: int, settings: Settings, *, count: int | None = None, now=None
) -> list[Batch]:
    """Claim up to `count` batches (a window by default) and give each to a worker after the
    commit (send_batch: the issue, the ids, the token, whether to chain)."""
    count = settings.send_window if count is None else count
    batches = dispatch(session, issue_id, count, batch_size(settings), now=now)
    for b in batches:
        after_commit.enqueue(session, SEND_BATCH, issue_id, b.ids, b.token, b.chain)
    return batches


def release(session, batch: Batch) -> int:
    """Give back the rows of a batch that never reached a task (the broker refused it)."""
    return session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(batch.ids),
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claimed_by == QUEUED + batch.token,
        )
        .values(status=DeliveryStatus.PENDING, claimed_at=None, claimed_by=None)
        .execution_options(synchronize_session=False)
    ).rowcount


# --- control ----------------------------------------------------------------------------


def pause(session: Session, issue_id: int, reason: str = "Paused by an operator.") -> None:
    """sending → paused: running batches stop after the messages already on the wire."""
    states.transition(session, issue_id, states.PAUSE, status_reason=reason[:1000])


def resume(session: Session, issue_id: int, settings: Settings, *, now=None) -> list[Batch]:
    """paused → sending; the batches handed out again go to the workers at the commit."""
    states.transition(session, issue_id, states.RESUME, status_reason=None)
    return hand_out(session, issue_id, settings, now=now)


def cancel(session: Session, issue_id: int) -> None:
    """Stop for good: rows not yet sent stay pending and are never sent."""
    states.transition(session, issue_id, states.CANCEL, status_reason="Cancelled by an operator.")


def uncertain_rows(
    session: Session, issue_id: int, limit: int = 1000
) -> list[tuple[int, str | None, str | None]]:
    """(delivery id, email, last error) of the rows that may or may not have been delivered."""
    _issue(session, issue_id)
    rows = session.execute(
        select(Delivery.id, Subscriber.email, Delivery.last_error)
        .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.UNCERTAIN)
        .order_by(Delivery.id)
        .limit(limit)
    )
    return [(i, email, error) for i, email, error in rows]


def resend_uncertain(session: Session, issue_id: int, settings: Settings, *, now=None) -> int:
    """Send the uncertain rows again, on an operator's word (some readers may get two);
    how many. A paused issue sends them when it is resumed."""
    issue = _issue(session, issue_id)
    if issue.status == IssueStatus.FINISHED:
        states.transition(session, issue_id, states.REOPEN, finished_at=None)
    elif issue.status not in (IssueStatus.SENDING, IssueStatus.PAUSED):
        may_resend = (IssueStatus.SENDING, IssueStatus.PAUSED, IssueStatus.FINISHED)
        raise InvalidTransition(f"Issue {issue_id}", may_resend, IssueStatus.SENDING)
    count = session.execute(
        update(Delivery)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.UNCERTAIN)
        .values(
            status=DeliveryStatus.PENDING,
            claimed_at=None,
            claimed_by=None,
            next_attempt_at=None,
            last_error="re-sent by an operator after an uncertain attempt",
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if issue.status != IssueStatus.PAUSED:
        hand_out(session, issue_id, settings, now=now)
    return count


# --- status -----------------------------------------------------------------------------

RATE_WINDOW = 30.0


def status(session: Session, issue_id: int, *, now=None) -> dict:
    """Counts per delivery state, readers skipped, the current rate and an estimate of the end."""
    now = now or utcnow()
    issue = _issue(session, issue_id)
    counts = {str(s): 0 for s in DeliveryStatus}
    withdrawn = 0
    never_tried = (Delivery.status == DeliveryStatus.FAILED_PERMANENT) & (Delivery.attempts == 0)
    for state, untried, n in session.execute(
        select(Delivery.status, never_tried, func.count())
        .where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status, never_tried)
    ):
        counts[str(state)] += n
        if untried:
            withdrawn += n
    skipped = session.scalar(
        select(func.coalesce(func.sum(IssueVariant.readers), 0)).where(
            IssueVariant.issue_id == issue_id, IssueVariant.empty.is_(True)
        )
    )
    span = RATE_WINDOW
    if issue.started_at is not None:
        span = max(1.0, min(RATE_WINDOW, (now - issue.started_at).total_seconds()))
    recent = session.scalar(
        select(func.count()).where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.sent_at >= now - timedelta(seconds=span),
        )
    )
    rate = recent / span if issue.status == IssueStatus.SENDING else 0.0
    remaining = counts["pending"] + counts["sending"] + counts["failed_temporary"]
    total = sum(counts.values())
    iso = lambda d: d.isoformat() if d else None
    return {
        "issue": issue_id,
        "status": str(issue.status),
        "reason": issue.status_reason,
        "total": total,
        "counts": counts,
        "done": total - remaining,
        "remaining": remaining,
        "withdrawn": withdrawn,  # readers who left before their turn (failed_permanent, untried)
        # Bounces and complaints reported about this issue's messages, and their rates.
        **{k: v for k, v in bounces.issue_counts(session, issue_id).items() if k != "messages"},
        "skipped_no_items": int(skipped or 0),
        "rate": round(rate, 1),
        "eta_seconds": math.ceil(remaining / rate) if rate > 0 else None,
        "started_at": iso(issue.started_at),
        "finished_at": iso(issue.finished_at),
    }


# --- sweeper ----------------------------------------------------------------------------


def finish_if_done(session: Session | Connection, issue_id: int, *, now=None) -> bool:
    """sending → finished, but only once no row is pending, sending or failed_temporary."""
    still_open = select(Delivery.id).where(Delivery.issue_id == issue_id, Delivery.status.in_(OPEN))
    return states.transition(
        session, issue_id, states.FINISH, when=~still_open.exists(), finished_at=now or utcnow()
    )


def sweep(session: Session, settings: Settings, *, now=None) -> SweepResult:
    """The tick's housekeeping for every issue (see the module docstring)."""
    now = now or utcnow()
    lease = now - timedelta(seconds=settings.send_lease_seconds)
    out = SweepResult()
    held = Delivery.status == DeliveryStatus.SENDING
    # Held by a process whose heartbeat lapsed: it is dead, release its claims now. Or
    # handed out longer than the lease ago: a task the broker lost, a worker that never beat.
    dead = workers.lapsed(session, settings.worker_timeout_seconds, now)
    held_by_dead = [Delivery.claimed_by.endswith(":" + name, autoescape=True) for name in dead]
    stale = and_(held, or_(Delivery.claimed_at < lease, *held_by_dead))
    # Never tried: safe to hand out again.
    lost = _grouped_update(
        session,
        stale & Delivery.claimed_by.startswith(QUEUED),
        {"status": DeliveryStatus.PENDING, "claimed_at": None, "claimed_by": None},
    )
    out.requeued = sum(lost.values())
    # Tried and never recorded: the server may have accepted it. Never re-sent by itself.
    out.uncertain = sum(
        _grouped_update(
            session,
            stale & Delivery.claimed_by.startswith(TRIED),
            {"status": DeliveryStatus.UNCERTAIN, "last_error": MAY_HAVE_ARRIVED},
        ).values()
    )
    workers.forget(session, dead)

    size = batch_size(settings)
    sending = select(Issue.id).where(Issue.status == IssueStatus.SENDING)
    for issue_id in list(session.scalars(sending)):
        out.retried += session.execute(
            update(Delivery)
            .where(
                Delivery.issue_id == issue_id,
                Delivery.status == DeliveryStatus.FAILED_TEMPORARY,
                Delivery.next_attempt_at <= now,
            )
            .values(
                status=DeliveryStatus.PENDING,
                claimed_at=None,
                claimed_by=None,
                next_attempt_at=None,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if finish_if_done(session, issue_id, now=now):
            out.finished += 1
            continue
        if _pause_if_stalled(session, issue_id, lease, settings.send_lease_seconds):
            out.paused += 1
            continue
        # Replace the batches that were lost; an issue with nothing in flight gets a window.
        want = math.ceil(lost.get(issue_id, 0) / size)
        if not _in_flight(session, issue_id):
            want = settings.send_window
        if want:
            batches = hand_out(
                session, issue_id, settings, count=min(want, settings.send_window), now=now
            )
            if batches:
                out.batches[issue_id] = batches
    return out


def _grouped_update(session: Session, condition, values: dict) -> dict[int, int]:
    """UPDATE the rows matching `condition`; how many per issue."""
    rows = (
        session.execute(
            update(Delivery)
            .where(condition)
            .values(**values)
            .returning(Delivery.issue_id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    counts: dict[int, int] = {}
    for issue_id in rows:
        counts[issue_id] = counts.get(issue_id, 0) + 1
    return counts


def _in_flight(session: Session, issue_id: int) -> bool:
    """Whether some task holds rows of the issue (queued or sending them)."""
    busy = select(Delivery.id).where(
        Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING
    )
    return bool(session.scalar(select(busy.exists())))


def _pause_if_stalled(session: Session, issue_id: int, since: datetime, seconds: float) -> bool:
    """Pause an issue that could send nothing for a whole lease because a server is down."""
    issue = session.get(Issue, issue_id)
    if issue.started_at is None or issue.started_at > since:
        return False
    last_sent = session.scalar(
        select(func.max(Delivery.sent_at)).where(
            Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENT
        )
    )
    if last_sent is not None and last_sent > since:
        return False
    error = session.scalar(
        select(Delivery.last_error)
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            Delivery.last_error.like("unreachable: %"),
        )
        .limit(1)
    )
    if error is None:
        return False
    minutes = max(1, round(seconds / 60))
    pause(
        session,
        issue_id,
        f"Paused automatically: nothing could be sent for {minutes} "
        f"minutes; {error.removeprefix('unreachable: ')}",
    )
    return True

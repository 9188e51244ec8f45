"""Outgoing webhooks: the events outbox, and the protocol of each delivery.

Outbox. `emit(session, type, data)` is called by the service that makes a change, in its
transaction: it inserts the event and one delivery row per enabled endpoint that wants the
type (nothing at all when none does), and records an after-commit intent per delivery. A
rollback takes the rows and the intents with it: nothing is sent for a change that did not
happen. A crash after the COMMIT loses nothing either: the rows are there, and the sweeper
hands out every pending row whose hand-out is a lease old.

Delivery. A task attempt first claims its row (pending -> sending, a conditional UPDATE with
a lease, attempts + 1) and commits, then POSTs, then records the outcome: delivered on a 2xx,
otherwise pending again after the next wait of MAILER_WEBHOOK_RETRIES, or failed after the
last. A worker killed mid-POST leaves a `sending` row whose lease runs out; the sweeper puts
it back to pending and it is sent again with the same webhook-id (at least once; receivers
dedupe on the id). Due times live in SQL; only waits under a minute ride on a Celery
countdown, longer ones are the sweeper's.

An endpoint that has failed without a success for MAILER_WEBHOOK_DISABLE_HOURS is disabled;
the caller tells ops. Its pending rows wait, and go out if it is enabled again.

History. A finished delivery (delivered, or failed for good) is kept MAILER_WEBHOOK_KEEP_DAYS
after its last attempt, then `prune` deletes it, and an event once no delivery of it is left
and it is as old; pending and sending rows, and their events, stay however old. The attempt
counters (`hook_counts`, /metrics) are kept apart from the rows, so pruning never lowers them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.models import HookCount, HookDelivery, HookEndpoint, HookEvent, HookStatus
from mailer.services import after_commit

EVENT_TYPES = (
    "subscriber.created",
    "subscriber.confirmed",
    "subscriber.updated",
    "subscriber.unsubscribed",
    "subscriber.bounced",
    "subscriber.complained",
    "subscriber.erased",
    "issue.sending",
    "issue.finished",
    "issue.paused",
    "issue.skipped",
    "schedule.run",
)
TEST_EVENT = "webhook.test"  # sent by "send a test event" only, to the one endpoint
# What only endpoints with the personal-data opt-in get (inside `data.subscriber`).
PERSONAL = ("email", "name", "previous_email")
TASK = "mailer.deliver_webhook"
LEASE = timedelta(seconds=60)  # an attempt takes 10 s at most; then the row is free again
COUNTDOWN_MAX = 60.0  # longer waits are handed out by the sweeper, not a Celery countdown


def new_msg_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def events_key(types) -> str:
    """The endpoint's `events` column: ",a,b," (see models.hooks)."""
    return "," + ",".join(sorted(set(types))) + ","


def wants(event_type: str):
    """SQL condition: an enabled endpoint subscribed to `event_type`."""
    return HookEndpoint.enabled.is_(True) & HookEndpoint.events.like(f"%,{event_type},%")


def subscriber_data(sub, **extra) -> dict:
    """A reader as events tell it (the personal fields are dropped for most endpoints)."""
    return {
        "subscriber": {
            "id": sub.id,
            "status": str(sub.status),
            "email": sub.email,
            "name": sub.name,
            "frequency": str(sub.frequency),
            "sections": sub.section_list,
            "source": sub.source,
        },
        **extra,
    }


def emit(
    session: Session | Connection,
    event_type: str,
    data: dict,
    *,
    subscriber_id: int | None = None,
    now: datetime | None = None,
    endpoint_ids: list[int] | None = None,
) -> int | None:
    """Record an event and its deliveries in the caller's transaction; the event's id, or
    None when no endpoint wants it. `endpoint_ids` (from `endpoints_for`) saves the lookup
    when one caller emits many events of a type."""
    assert event_type in EVENT_TYPES or event_type == TEST_EVENT, event_type
    if endpoint_ids is None:
        endpoint_ids = endpoints_for(session, event_type)
    if not endpoint_ids:
        return None
    now = now or utcnow()
    event_id = session.execute(
        insert(HookEvent)
        .values(uid=new_msg_id(), type=event_type, subscriber_id=subscriber_id,
                payload=json.dumps(data, default=str), created_at=now)
        .returning(HookEvent.id)
    ).scalar_one()
    for endpoint_id in endpoint_ids:
        delivery_id = session.execute(
            insert(HookDelivery)
            .values(event_id=event_id, endpoint_id=endpoint_id, status=HookStatus.PENDING,
                    attempts=0, next_attempt_at=now, handed_out_at=now, created_at=now)
            .returning(HookDelivery.id)
        ).scalar_one()
        hand_out(session, delivery_id)
    return event_id


def endpoints_for(session: Session | Connection, event_type: str) -> list[int]:
    return list(session.scalars(select(HookEndpoint.id).where(wants(event_type))))


def hand_out(session: Session | Connection, delivery_id: int, countdown: float | None = None):
    """After the commit, a task attempts the delivery. (On a bare connection there is no
    commit to wait for: the sweeper hands the row out.)"""
    if isinstance(session, Connection):
        session.execute(update(HookDelivery).where(HookDelivery.id == delivery_id)
                        .values(handed_out_at=None))
        return
    after_commit.enqueue(session, TASK, delivery_id, countdown=countdown)


def scrub(session: Session, subscriber_id: int) -> int:
    """Strip the personal fields from the reader's events not yet delivered everywhere (an
    erasure must not leave their address waiting in the outbox)."""
    n = 0
    for event in session.scalars(select(HookEvent).where(HookEvent.subscriber_id == subscriber_id)):
        data = json.loads(event.payload)
        if _strip(data) != data:
            event.payload = json.dumps(_strip(data))
            n += 1
    return n


def _strip(data: dict) -> dict:
    sub = data.get("subscriber")
    if not isinstance(sub, dict):
        return data
    return {**data, "subscriber": {k: v for k, v in sub.items() if k not in PERSONAL}}


# --- delivery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What a task needs to make one attempt: where, what, signed with which secret."""

    delivery_id: int
    endpoint_id: int
    url: str
    secret: str
    msg_id: str
    body: bytes
    attempt: int


def body_of(event: HookEvent, personal: bool) -> bytes:
    """The JSON a receiver gets: type, timestamp, data (without the personal fields unless
    the endpoint opted in)."""
    data = json.loads(event.payload)
    if not personal:
        data = _strip(data)
    return json.dumps(
        {"type": event.type, "timestamp": event.created_at.isoformat(), "data": data},
        separators=(",", ":"),
    ).encode()


def claim(session: Session, delivery_id: int, now: datetime | None = None) -> Attempt | None:
    """Take the row for one attempt; None if it is not due, taken, finished or its endpoint
    is disabled or gone (a second copy of the task, a stale hand-out)."""
    now = now or utcnow()
    enabled = select(HookEndpoint.id).where(
        HookEndpoint.id == HookDelivery.endpoint_id, HookEndpoint.enabled.is_(True)
    ).exists()
    taken = session.execute(
        update(HookDelivery)
        .where(
            HookDelivery.id == delivery_id,
            HookDelivery.status == HookStatus.PENDING,
            # A countdown may fire a little early on another host's clock.
            HookDelivery.next_attempt_at <= now + timedelta(seconds=2),
            enabled,
        )
        .values(status=HookStatus.SENDING, attempts=HookDelivery.attempts + 1,
                claimed_until=now + LEASE, last_attempt_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not taken:
        return None
    row = session.execute(
        select(HookDelivery, HookEvent, HookEndpoint)
        .join(HookEvent, HookEvent.id == HookDelivery.event_id)
        .join(HookEndpoint, HookEndpoint.id == HookDelivery.endpoint_id)
        .where(HookDelivery.id == delivery_id)
    ).one()
    delivery, event, endpoint = row
    session.refresh(delivery)
    return Attempt(delivery.id, endpoint.id, endpoint.url, endpoint.secret, event.uid,
                   body_of(event, endpoint.personal_data), delivery.attempts)


@dataclass(frozen=True)
class Recorded:
    status: HookStatus
    next_attempt_at: datetime | None = None
    disabled_endpoint: HookEndpoint | None = None  # disabled by this failure: tell ops


def record(
    session: Session,
    attempt: Attempt,
    *,
    ok: bool,
    status_code: int | None,
    latency_ms: int,
    excerpt: str,
    refused: bool = False,
    retries: tuple[float, ...],
    disable_after: timedelta,
    now: datetime | None = None,
) -> Recorded | None:
    """The outcome of an attempt; None if the claim was lost (the sweeper took it back)."""
    now = now or utcnow()
    common = dict(response_status=status_code, latency_ms=latency_ms,
                  response_excerpt=excerpt[:4096] if ok or status_code else None,
                  error=None if ok or status_code else excerpt[:300], claimed_until=None)
    if ok:
        values = dict(status=HookStatus.DELIVERED, delivered_at=now, **common)
        result = Recorded(HookStatus.DELIVERED)
    elif attempt.attempt <= len(retries):
        wait = retries[attempt.attempt - 1]
        due = now + timedelta(seconds=wait)
        short = wait <= COUNTDOWN_MAX
        values = dict(status=HookStatus.PENDING, next_attempt_at=due,
                      handed_out_at=due if short else None, **common)
        result = Recorded(HookStatus.PENDING, due)
    else:
        values = dict(status=HookStatus.FAILED, **common)
        result = Recorded(HookStatus.FAILED)
    done = session.execute(
        update(HookDelivery)
        .where(HookDelivery.id == attempt.delivery_id, HookDelivery.status == HookStatus.SENDING,
               HookDelivery.attempts == attempt.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount
    count(session, "delivered" if ok else "refused" if refused else "failed")
    if not done:
        return None
    if result.status == HookStatus.PENDING and result.next_attempt_at and values["handed_out_at"]:
        hand_out(session, attempt.delivery_id,
                 countdown=max(0.0, (result.next_attempt_at - now).total_seconds()))
    endpoint = session.get(HookEndpoint, attempt.endpoint_id)
    if endpoint is None:
        return result
    if ok:
        endpoint.failing_since = None
        return result
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    elif endpoint.enabled and now - endpoint.failing_since >= disable_after:
        endpoint.enabled = False
        hours = disable_after.total_seconds() / 3600
        endpoint.disabled_reason = (
            f"Disabled on {now:%Y-%m-%d %H:%M} UTC after failing for {hours:g} hours "
            f"without a success; last answer: {status_code or excerpt[:150]}"
        )
        return Recorded(result.status, result.next_attempt_at, endpoint)
    return result


def count(session: Session, result: str) -> None:
    """One more attempt with this result (the metrics' counter), race-free on both databases."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    stmt = upsert(HookCount).values(result=result, n=1)
    session.execute(stmt.on_conflict_do_update(index_elements=["result"],
                                               set_={"n": HookCount.n + 1}))


def sweep(session: Session, now: datetime | None = None, limit: int = 500) -> dict:
    """The tick step's work: attempts whose worker died go back to pending, due rows whose
    hand-out is missing or a lease old are handed out (again)."""
    now = now or utcnow()
    released = session.execute(
        update(HookDelivery)
        .where(HookDelivery.status == HookStatus.SENDING, HookDelivery.claimed_until < now)
        # Due since the attempt began: it is made again at once, with the same webhook-id.
        .values(status=HookStatus.PENDING, claimed_until=None,
                next_attempt_at=HookDelivery.last_attempt_at, handed_out_at=None,
                error="the worker stopped during the attempt; made again")
        .execution_options(synchronize_session=False)
    ).rowcount
    due = list(session.scalars(
        select(HookDelivery.id)
        .join(HookEndpoint, HookEndpoint.id == HookDelivery.endpoint_id)
        .where(
            HookDelivery.status == HookStatus.PENDING,
            HookDelivery.next_attempt_at <= now,
            HookDelivery.handed_out_at.is_(None) | (HookDelivery.handed_out_at < now - LEASE),
            HookEndpoint.enabled.is_(True),
        )
        .order_by(HookDelivery.next_attempt_at, HookDelivery.id)
        .limit(limit)
    ))
    if due:
        session.execute(update(HookDelivery).where(HookDelivery.id.in_(due))
                        .values(handed_out_at=now).execution_options(synchronize_session=False))
        for delivery_id in due:
            hand_out(session, delivery_id)
    return {"released": released, "handed_out": len(due)}


def not_handed_out(session: Session, delivery_id: int) -> None:
    """The broker refused the task: the next sweep hands the row out at once."""
    session.execute(update(HookDelivery)
                    .where(HookDelivery.id == delivery_id, HookDelivery.status == HookStatus.PENDING)
                    .values(handed_out_at=None).execution_options(synchronize_session=False))


FINISHED = (HookStatus.DELIVERED, HookStatus.FAILED)


def prune(session: Session, keep: timedelta, now: datetime | None = None,
          limit: int = 1000) -> dict:
    """One bounded batch of the history's retention: at most `limit` finished deliveries
    whose last attempt is older than `keep`, then at most `limit` events as old that no
    delivery is left of. The caller commits each batch and calls again while one is full.

    The deliveries are found through the due index (status, next_attempt_at): a finished
    row's next_attempt_at is when its last attempt was due, never after it was made. The
    conditions are repeated on the DELETE itself, so a row an operator redelivers meanwhile
    (pending again) is not deleted on PostgreSQL's re-check either."""
    cutoff = (now or utcnow()) - keep
    old_finished = (HookDelivery.status.in_(FINISHED), HookDelivery.next_attempt_at < cutoff,
                    HookDelivery.last_attempt_at < cutoff)
    batch = select(HookDelivery.id).where(*old_finished).limit(limit).scalar_subquery()
    deliveries = session.execute(
        delete(HookDelivery).where(HookDelivery.id.in_(batch), *old_finished)
        .execution_options(synchronize_session=False)
    ).rowcount
    left = select(HookDelivery.id).where(HookDelivery.event_id == HookEvent.id).exists()
    freed = (select(HookEvent.id).where(HookEvent.created_at < cutoff, ~left)
             .order_by(HookEvent.created_at).limit(limit).scalar_subquery())
    events = session.execute(
        delete(HookEvent).where(HookEvent.id.in_(freed), HookEvent.created_at < cutoff, ~left)
        .execution_options(synchronize_session=False)
    ).rowcount
    return {"deliveries": deliveries, "events": events}


RESULTS = ("delivered", "failed", "refused")


def attempt_counts(session: Session) -> dict[str, int]:
    """Attempts since the start by result: delivered (2xx), failed, refused (address check)."""
    counts = dict.fromkeys(RESULTS, 0)
    counts.update({result: n for result, n in session.execute(select(HookCount.result, HookCount.n))})
    return counts


def oldest_undelivered_age(session: Session, now: datetime | None = None) -> float:
    """Seconds since the oldest event still waiting for an endpoint (0 when none waits)."""
    from sqlalchemy import func

    oldest = session.scalar(
        select(func.min(HookEvent.created_at))
        .join(HookDelivery, HookDelivery.event_id == HookEvent.id)
        .where(HookDelivery.status.in_((HookStatus.PENDING, HookStatus.SENDING)))
    )
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # min() bypasses the column type on SQLite
        oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=UTC)
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())

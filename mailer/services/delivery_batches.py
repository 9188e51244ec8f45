"""One batch of deliveries: try, send and record them in small groups. Exactly once.

dispatch() (services.deliveries) handed the task its rows already claimed: `sending`, with
claimed_by = "q:<token>". The task first names its process on them ("q:<token>:<worker>",
so that the sweeper can give them back at once if this process dies), then, per group of
`send_group` rows:

1. in one transaction, records the previous group's outcomes and marks this group as tried
   (claimed_by = "t:<token>:<worker>"), only if the issue is still sending and only the
   rows still held for this task: a second copy of the task gets none of them, and neither
   does this one for rows the sweeper took back;
2. sends the group on its SMTP connection, under the shared rate limit;

and finally records the last outcomes and finishes the issue if nothing is left. A crash
leaves at most one group per process tried but unrecorded: the sweeper marks those
`uncertain` once the process's heartbeat lapses (services.workers), and hands the rows never
tried to another task.

This is the hot path of a send (a few statements per group of messages), so it runs on one
Core connection with statements built once, and commits between steps: unlike other
services the runner is given the engine rather than a session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from types import SimpleNamespace

from sqlalchemy import BigInteger, any_, bindparam, exists, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mailer.bounces import Kind, Report, Source
from mailer.clock import utcnow
from mailer.config import Settings
from mailer.errors import InvalidTransition
from mailer.mail.compiled import CompiledVariant, Reader
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.mail.ratelimit import Limiter, LimiterUnavailable
from mailer.mail.smtp import NotAttempted, Uncertain
from mailer.mail.transport import Transport
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Newsletter,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
)
from mailer.services import bounces, deliveries
from mailer.services.deliveries import QUEUED, TRIED, Batch, new_token
from mailer.services.workers import process_name

log = logging.getLogger(__name__)
DELIVERIES, ISSUES, SUBSCRIBERS = Delivery.__table__, Issue.__table__, Subscriber.__table__
SUBSCRIPTIONS = Subscription.__table__
UNREACHABLE = "unreachable: "
RELEASE_DELAY = 10.0  # seconds before rows the server never saw are tried again

# --- the statements, built once ----------------------------------------------------------
# claimed_by alone says which rows a run holds: "q:<token>" = queued for it, not tried;
# its tried marker = tried by it. Conditions on the indexed status column would tempt the
# planner into scanning every row in flight instead of using the primary key.
_ISSUE_STATUS = select(ISSUES.c.status).where(ISSUES.c.id == bindparam("b_issue"))
_WITHDRAW = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.claimed_by == bindparam("b_queued"))
    .values(
        status=DeliveryStatus.FAILED_PERMANENT, last_error=bindparam("b_err"), claimed_by=None
    )
)
_OUTCOME = (
    update(DELIVERIES)
    .where(DELIVERIES.c.id == bindparam("b_id"), DELIVERIES.c.claimed_by == bindparam("b_tried"))
    .values(
        status=bindparam("b_st"),
        last_error=bindparam("b_err"),
        next_attempt_at=bindparam("b_next"),
        attempts=bindparam("b_att"),
        claimed_by=bindparam("b_by"),
        claimed_at=bindparam("b_now"),
    )
)


def _by_ids(by_ids) -> SimpleNamespace:
    """The statements that name rows by id, with `by_ids` as the condition on the ids."""
    open_ = (
        select(
            DELIVERIES.c.id,
            DELIVERIES.c.variant_id,
            DELIVERIES.c.attempts,
            SUBSCRIBERS.c.id,
            SUBSCRIBERS.c.email,
            SUBSCRIBERS.c.name,
            SUBSCRIBERS.c.uid,
            SUBSCRIBERS.c.status,
            SUBSCRIPTIONS.c.status,
        )
        .select_from(
            DELIVERIES.outerjoin(SUBSCRIBERS, SUBSCRIBERS.c.id == DELIVERIES.c.subscriber_id)
            # The reader's subscription to the issue's newsletter (an issue made before issues
            # named one belongs to the first): a reader who left it since the send started is
            # not mailed.
            .outerjoin(
                SUBSCRIPTIONS,
                (SUBSCRIPTIONS.c.subscriber_id == DELIVERIES.c.subscriber_id)
                & (SUBSCRIPTIONS.c.newsletter_id == func.coalesce(
                    select(ISSUES.c.newsletter_id)
                    .where(ISSUES.c.id == bindparam("b_issue")).scalar_subquery(),
                    select(func.min(Newsletter.__table__.c.id)).scalar_subquery(),
                )),
            )
        )
        # The batch is whatever dispatch() claimed for the token among the ids the task was
        # given: primary-key lookups. (Not the issue's rows in flight filtered by claimed_by:
        # every update of a row leaves an entry in the status indexes until vacuum, so that
        # range holds several dead entries per row of the issue and grows with the send.)
        .where(by_ids, DELIVERIES.c.claimed_by == bindparam("b_queued"))
        .order_by(DELIVERIES.c.id)
    )
    begin = (
        update(DELIVERIES)
        .where(
            by_ids,
            DELIVERIES.c.claimed_by == bindparam("b_queued"),
            exists().where(
                ISSUES.c.id == bindparam("b_issue"), ISSUES.c.status == IssueStatus.SENDING
            ),
        )
        .values(
            claimed_by=bindparam("b_tried"),
            attempts=DELIVERIES.c.attempts + 1,
            claimed_at=bindparam("b_now"),
        )
        .returning(DELIVERIES.c.id)
    )
    sent = (
        update(DELIVERIES)
        .where(by_ids, DELIVERIES.c.claimed_by == bindparam("b_tried"))
        .values(status=DeliveryStatus.SENT, sent_at=bindparam("b_now"), last_error=None)
    )
    hold = (
        update(DELIVERIES)
        .where(by_ids, DELIVERIES.c.claimed_by == bindparam("b_queued"))
        .values(claimed_by=bindparam("b_held"))
    )
    release = (
        update(DELIVERIES)
        .where(by_ids, DELIVERIES.c.claimed_by == bindparam("b_queued"))
        .values(status=DeliveryStatus.PENDING, claimed_by=None, claimed_at=None)
    )
    requeue = (
        update(DELIVERIES)
        .where(by_ids, DELIVERIES.c.claimed_by == bindparam("b_queued"))
        .values(claimed_by=bindparam("b_new"), claimed_at=bindparam("b_now"))
    )
    return SimpleNamespace(
        open=open_, begin=begin, sent=sent, hold=hold, release=release, requeue=requeue
    )


# A list of ids is one array parameter on PostgreSQL: the statement's text stays the same
# whatever the number of ids, so SQLAlchemy and psycopg reuse it (and PostgreSQL prepares it)
# instead of rendering and parsing one placeholder per id at every execution. SQLite has
# no arrays: an IN list there.
_SQL = {
    "postgresql": _by_ids(DELIVERIES.c.id == any_(bindparam("b_ids", type_=ARRAY(BigInteger)))),
    None: _by_ids(DELIVERIES.c.id.in_(bindparam("b_ids", expanding=True))),
}


_TRIED_COUNTS = (
    select(DELIVERIES.c.status, func.count())
    .where(
        DELIVERIES.c.issue_id == bindparam("b_issue"),
        DELIVERIES.c.attempts > 0,
        DELIVERIES.c.status.in_(
            [DeliveryStatus.SENT, DeliveryStatus.FAILED_TEMPORARY, DeliveryStatus.FAILED_PERMANENT]
        ),
    )
    .group_by(DELIVERIES.c.status)
)


def backoff(settings: Settings, attempts: int) -> float:
    """Seconds before try number attempts+1: base, 4x base, 16x base, ..."""
    return settings.retry_base_seconds * 4 ** max(0, attempts - 1)


@dataclass
class Claimed:
    id: int
    subscriber_id: int
    variant_id: int
    attempts: int  # tries before this one
    reader: Reader


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0
    temporary: int = 0
    permanent: int = 0
    uncertain: int = 0
    released: int = 0
    withdrawn: int = 0
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "errors"}
        return {k: v for k, v in d.items() if v}


@dataclass
class Run:
    """What one run of a batch holds, set once when it starts (BatchRunner.run)."""

    issue_id: int
    in_broker: str  # claimed_by of the rows handed to its task: "q:<token>"
    queued: str  # once this process holds them, not tried yet: "q:<token>:<worker>"
    tried: str  # the rows it has begun to send: "t:<token>:<worker>"
    chain: bool  # whether it hands out the next batch of the issue when it starts
    report: BatchReport = field(default_factory=BatchReport)
    retry: Batch | None = None  # rows the server never saw, for a task that starts later

    @classmethod
    def of(cls, issue_id: int, token: str, chain: bool) -> Run:
        name = process_name()  # services.workers: the name its heartbeat carries
        return cls(
            issue_id, QUEUED + token, f"{QUEUED}{token}:{name}", f"{TRIED}{token}:{name}", chain
        )


class BatchRunner:
    """Runs one batch (run()): the worker's task makes one per batch, with its process's
    SMTP transport, rate limiter and compiled variants, and `enqueue` for the batches it
    hands out itself after its own commits (the chain's next, a retry after a pause)."""

    def __init__(
        self,
        *,
        engine: Engine,
        transport: Transport,
        limiter: Limiter,
        variant: Callable[[int], CompiledVariant],
        settings: Settings,
        enqueue: Callable[[Batch, float | None], object],
        clock: Callable[[], datetime] = utcnow,
    ):
        self.engine = engine
        self.transport = transport
        self.limiter = limiter
        self.variant = variant
        self.settings = settings
        self.enqueue = enqueue
        self.clock = clock
        self.sql = _SQL.get(engine.dialect.name, _SQL[None])
        self._conn: Connection | None = None

    # --- transactions -------------------------------------------------------------------

    def _tx(self, fn):
        """Run fn(connection) in a transaction, again after a deadlock or a lost connection."""
        for attempt in range(4):
            if self._conn is None:
                self._conn = self.engine.connect()
            try:
                with self._conn.begin():
                    return fn(self._conn)
            except DBAPIError as e:
                if e.connection_invalidated:
                    self._close()
                if attempt == 3 or not (e.connection_invalidated or _retryable(e)):
                    raise
                log.warning("delivery transaction retried after %s", e.orig)
                time.sleep(0.2 * (attempt + 1))

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- the run ------------------------------------------------------------------------

    def run(self, issue_id: int, ids: list[int], token: str, chain: bool = True) -> BatchReport:
        self.current = Run.of(issue_id, token, chain)
        try:
            self._send_groups(ids)
        finally:
            self._close()
        return self.current.report

    def _send_groups(self, ids: list[int]) -> None:
        run, size = self.current, self.settings.send_group
        claimed, handed = self._tx(partial(self._open, ids=ids))
        for batch in handed:  # keep the window full while this batch sends
            self.enqueue(batch, None)
        if claimed is None:
            run.report.stopped = "issue not sending"
            return
        prepared = None
        for start in range(0, len(claimed), size):
            group = claimed[start : start + size]
            messages = self._build(group)
            begun = self._tx(partial(self._record_and_begin, prepared=prepared, group=group))
            prepared = None
            if not begun:
                if self._tx(self._issue_status) != IssueStatus.SENDING:
                    self._tx(partial(self._release, rows=claimed[start:]))
                    run.report.stopped = "issue paused or cancelled"
                    break
                # Sending again: paused and resumed in between (the resume found these rows
                # held, not pending, so nobody else sends them), or the sweeper took them
                # back (then this finds none of them and another task sends them).
                begun = self._tx(partial(self._begin, group=group))
                if not begun:
                    continue
            batch = [c for c in group if c.id in begun]
            outcomes = list(zip(batch, self._send([messages[c.id] for c in batch]), strict=True))
            unsent = [c for c, o in outcomes if isinstance(o, NotAttempted)]
            if unsent:
                self._hand_to_retry(unsent, rest=claimed[start + size :])
            prepared = self._prepare(outcomes)
            if run.retry:
                break
        self._tx(partial(self._write, prepared=prepared))
        # A transaction of its own, after the outcomes are committed: two last batches that
        # checked inside their own transactions would each see the other's rows in flight.
        self._tx(self._after)
        if run.retry:
            self.enqueue(run.retry, RELEASE_DELAY)

    def _record_and_begin(self, conn: Connection, prepared: dict | None, group) -> set[int]:
        """One transaction per group: the previous group's outcomes, this group tried."""
        self._write(conn, prepared)
        return self._begin(conn, group)

    def _release(self, conn: Connection, rows: list[Claimed]) -> None:
        """The issue was paused or cancelled: rows not tried go back to pending."""
        conn.execute(self.sql.release, self._ids(rows))

    def _hand_to_retry(self, unsent: list[Claimed], rest: list[Claimed]) -> None:
        """The server (or the rate limiter) is unreachable: the rows it never saw and the
        rest of the batch go to a new task that starts after a pause."""
        run = self.current
        run.retry = Batch(new_token(), [c.id for c in unsent + rest], chain=False)
        if rest:
            moved = {**self._ids(rest), "b_new": QUEUED + run.retry.token, "b_now": self.clock()}
            self._tx(lambda conn: conn.execute(self.sql.requeue, moved))
        run.report.released += len(rest)
        run.report.stopped = "server unreachable"

    def _ids(self, rows: list[Claimed]) -> dict:
        return {"b_ids": [c.id for c in rows], "b_queued": self.current.queued}

    def _issue_status(self, conn: Connection):
        return conn.scalar(_ISSUE_STATUS, {"b_issue": self.current.issue_id})

    def _open(self, conn: Connection, ids: list[int]):
        """The rows queued for this task with their readers; the next batch of the chain."""
        run = self.current
        if self._issue_status(conn) != IssueStatus.SENDING:
            conn.execute(self.sql.release, {"b_ids": ids, "b_queued": run.in_broker})
            return None, []
        # From here on the rows name this process: if it dies, they go back at once.
        conn.execute(self.sql.hold, {"b_ids": ids, "b_queued": run.in_broker, "b_held": run.queued})
        claimed, gone = [], []
        # .all(): one fetch of the batch's rows; iterating the result fetched them one by one.
        for did, variant_id, attempts, sub_id, email, name, uid, state, held in conn.execute(
            self.sql.open, {"b_ids": ids, "b_issue": run.issue_id, "b_queued": run.queued}
        ).all():
            if sub_id is None or state != SubscriberStatus.ACTIVE or variant_id is None:
                gone.append(
                    {
                        "b_id": did,
                        "b_queued": run.queued,
                        "b_err": f"not sent: the reader is {state or 'erased'}",
                    }
                )
            elif held != SubscriptionStatus.ACTIVE:
                gone.append(
                    {
                        "b_id": did,
                        "b_queued": run.queued,
                        "b_err": "not sent: the reader left this newsletter",
                    }
                )
            else:
                claimed.append(
                    Claimed(did, sub_id, variant_id, attempts, Reader(did, email, name, uid))
                )
        if gone:
            # Readers who left after the send started are not mailed; attempts stay 0.
            conn.execute(_WITHDRAW, gone)
            run.report.withdrawn += len(gone)
        run.report.claimed += len(claimed)
        if not run.chain or not (claimed or gone):
            return claimed, []  # a retry, or a copy of a task that already ran
        handed = deliveries.dispatch(
            conn,
            run.issue_id,
            1,
            deliveries.batch_size(self.settings),
            after=max(ids, default=0),
            now=self.clock(),
        )
        return claimed, handed

    def _build(self, group: list[Claimed]) -> dict[int, object]:
        return {c.id: self.variant(c.variant_id).build(c.reader) for c in group}

    def _begin(self, conn: Connection, group: list[Claimed]) -> set[int]:
        """Mark the group as tried, only while the issue is sending; the ids marked."""
        return set(
            conn.scalars(
                self.sql.begin,
                {
                    **self._ids(group),
                    "b_issue": self.current.issue_id,
                    "b_tried": self.current.tried,
                    "b_now": self.clock(),
                },
            ).all()
        )

    def _send(self, messages: list) -> list[Exception | None]:
        results: list[Exception | None] = []
        step = self.limiter.chunk()
        for k in range(0, len(messages), step):
            part = messages[k : k + step]
            try:
                self.limiter.acquire(len(part))
            except LimiterUnavailable as e:
                return results + [NotAttempted(str(e))] * (len(messages) - k)
            results += self.transport.send_many(part)
            if isinstance(results[-1], NotAttempted):  # no connection: stop here
                return results + [results[-1]] * (len(messages) - len(results))
        return results

    # --- recording ----------------------------------------------------------------------

    def _prepare(self, outcomes: list[tuple[Claimed, Exception | None]]) -> dict:
        """Turn outcomes into the rows to write (and count them), outside any transaction."""
        now = self.clock()
        run = self.current
        r = run.report
        sent, rows, bounced = [], [], []

        def row(c, state, err, attempts, nxt=None, by=None):
            rows.append(
                {
                    "b_id": c.id,
                    "b_tried": run.tried,
                    "b_st": state,
                    "b_err": err[:1000],
                    "b_att": attempts,
                    "b_next": nxt,
                    "b_by": by or run.tried,
                    "b_now": now,
                }
            )

        for c, o in outcomes:
            if o is None:
                sent.append(c.id)
                continue
            err = str(o)
            r.errors.append(err)
            if isinstance(o, NotAttempted):  # to the retry task, this try not counted
                row(c, DeliveryStatus.SENDING, UNREACHABLE + err, c.attempts,
                    by=QUEUED + run.retry.token)
                r.released += 1
            elif isinstance(o, Uncertain):
                row(c, DeliveryStatus.UNCERTAIN, err, c.attempts + 1)
                r.uncertain += 1
            elif isinstance(o, PermanentFailure):
                row(c, DeliveryStatus.FAILED_PERMANENT, err, c.attempts + 1)
                bounced.append((c.id, err))
                r.permanent += 1
            elif isinstance(o, TemporaryFailure):
                tries = c.attempts + 1
                if tries >= self.settings.retry_tries:
                    gave_up = f"gave up after {tries} tries: {err}"
                    row(c, DeliveryStatus.FAILED_PERMANENT, gave_up, tries)
                    r.permanent += 1
                else:
                    wait = timedelta(seconds=backoff(self.settings, tries))
                    row(c, DeliveryStatus.FAILED_TEMPORARY, err, tries, nxt=now + wait)
                    r.temporary += 1
        r.sent += len(sent)
        return {"sent": sent, "rows": rows, "bounced": bounced, "now": now}

    def _write(self, conn: Connection, prepared: dict | None) -> None:
        """Record outcomes of rows this run tried: still `sending`, or `uncertain` if the
        sweeper judged a slow run dead (what actually happened beats a guess)."""
        if not prepared:
            return
        now = prepared["now"]
        if prepared["sent"]:
            tried = {"b_ids": prepared["sent"], "b_tried": self.current.tried, "b_now": now}
            conn.execute(self.sql.sent, tried)
        if prepared["rows"]:
            conn.execute(_OUTCOME, prepared["rows"])
        if prepared["bounced"]:
            # A 5xx answer is a hard bounce like one reported later: the same pipeline
            # (services.bounces) records it in the reader's history and sets them bounced.
            # Only rows that failed pay for it: a send without 5xx answers runs no more
            # statements than before.
            with Session(bind=conn) as session:
                for delivery_id, err in prepared["bounced"]:
                    report = Report(
                        source=Source.SMTP, kind=Kind.HARD, key=str(delivery_id),
                        delivery_id=delivery_id, diagnostic=err, at=now,
                    )
                    bounces.record(session, self.settings, report, now=now)
                session.flush()

    def _after(self, conn: Connection) -> None:
        """Finish the issue if nothing is left; pause it if too much failed."""
        issue_id, r = self.current.issue_id, self.current.report
        if deliveries.finish_if_done(conn, issue_id, now=self.clock()):
            return
        failed = r.temporary + r.permanent
        if failed < 10 or failed < (r.sent + failed) / 2:
            return
        counts = dict(conn.execute(_TRIED_COUNTS, {"b_issue": issue_id}).all())
        bad = sum(counts.get(s, 0) for s in (DeliveryStatus.FAILED_TEMPORARY,
                                             DeliveryStatus.FAILED_PERMANENT))
        tried = bad + counts.get(DeliveryStatus.SENT, 0)
        if bad >= self.settings.pause_errors and bad >= 0.2 * tried:
            reason = (
                f"Paused automatically: {bad} of {tried} messages failed; "
                f"the last answer was: {r.errors[-1]}"
            )
            with Session(bind=conn) as session:
                try:
                    deliveries.pause(session, issue_id, reason)
                    session.flush()
                    r.stopped = "paused automatically"
                except InvalidTransition:
                    pass  # paused or cancelled meanwhile


def _retryable(e: DBAPIError) -> bool:
    code = getattr(e.orig, "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(e.orig)

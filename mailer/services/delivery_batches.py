"""One batch of deliveries: try, send and record them in small groups. Exactly once.

dispatch() (services.deliveries) handed the task its rows already claimed: `sending`, with
claimed_by = "q:<token>". The task then, per group of `send_group` rows:

1. in one transaction, records the previous group's outcomes and marks this group as tried
   (claimed_by = "t:<token>:<host>:<pid>"), only if the issue is still sending and only the
   rows still queued for this token: a second copy of the task gets none of them;
2. sends the group on its SMTP connection, under the shared rate limit;

and finally records the last outcomes and finishes the issue if nothing is left. A crash
leaves at most one group per process tried but unrecorded: the sweeper marks those
`uncertain`, and hands the rows never tried to another task. The protocol commits between
steps, so unlike other services the runner is given a transaction factory (the task's
db.transaction) rather than one session.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError

from mailer.db import utcnow
from mailer.errors import InvalidTransition
from mailer.mail.compiled import CompiledVariant, Reader
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.mail.ratelimit import LimiterUnavailable
from mailer.mail.smtp import NotAttempted, Uncertain
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
)
from mailer.services import deliveries
from mailer.services.deliveries import QUEUED, TRIED, Batch, new_token

log = logging.getLogger(__name__)
D = DeliveryStatus
T = Delivery.__table__
UNREACHABLE = "unreachable: "
RELEASE_DELAY = 10.0  # seconds before rows the server never saw are tried again


def run_name() -> str:
    """Which process tried a row: host and pid, for the operator."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}"


def backoff(settings, attempts: int) -> float:
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


class BatchRunner:
    def __init__(
        self,
        *,
        transaction: Callable,
        transport,
        limiter,
        variant: Callable[[int], CompiledVariant],
        settings,
        enqueue: Callable[[Batch, float | None], object],
        clock: Callable = utcnow,
    ):
        self.transaction = transaction
        self.transport = transport
        self.limiter = limiter
        self.variant = variant
        self.settings = settings
        self.enqueue = enqueue
        self.clock = clock
        self.report = BatchReport()
        self._retry_token: str | None = None

    # --- transactions -------------------------------------------------------------------

    def _tx(self, fn):
        """Run fn(session) in a transaction, again after a deadlock or a lost connection."""
        for attempt in range(4):
            try:
                with self.transaction() as s:
                    return fn(s)
            except DBAPIError as e:
                if attempt == 3 or not (e.connection_invalidated or _retryable(e)):
                    raise
                log.warning("delivery transaction retried after %s", e.orig)
                time.sleep(0.2 * (attempt + 1))

    # --- the run ------------------------------------------------------------------------

    def run(self, issue_id: int, ids: list[int], token: str) -> BatchReport:
        self.queued = QUEUED + token
        self.tried = f"{TRIED}{token}:{run_name()}"[:100]
        claimed, handed = self._tx(lambda s: self._open(s, issue_id, ids))
        for batch in handed:  # keep the window full while this batch sends
            self.enqueue(batch, None)
        if claimed is None:
            self.report.stopped = "issue not sending"
            return self.report
        size = self.settings.send_group
        prepared = None
        retry: Batch | None = None
        for start in range(0, len(claimed), size):
            group = claimed[start : start + size]
            messages = self._build(group)
            done = prepared
            begun = self._tx(lambda s: self._write(s, done) or self._begin(s, issue_id, group))
            prepared = None
            if not begun:
                state = self._tx(lambda s: s.scalar(select(Issue.status).where(Issue.id == issue_id)))
                if state != IssueStatus.SENDING:
                    self._tx(lambda s: self._release(s, claimed[start:]))
                    self.report.stopped = "issue paused or cancelled"
                    break
                continue  # the sweeper took these rows back: another task sends them
            batch = [c for c in group if c.id in begun]
            outcomes = list(zip(batch, self._send([messages[c.id] for c in batch]), strict=True))
            unsent = [c for c, o in outcomes if isinstance(o, NotAttempted)]
            if unsent:
                # The server (or the rate limiter) is unreachable: these rows and the rest
                # of the batch go to a new task that starts after a pause.
                retry = Batch(new_token(), [c.id for c in unsent + claimed[start + size :]])
                self._retry_token = QUEUED + retry.token
                rest = claimed[start + size :]
                if rest:
                    self._tx(lambda s: self._requeue(s, rest, retry.token))
                self.report.released += len(rest)
                self.report.stopped = "server unreachable"
            prepared = self._prepare(outcomes)
            if retry:
                break
        done = prepared
        self._tx(lambda s: self._write(s, done) or self._after(s, issue_id))
        if retry:
            self.enqueue(retry, RELEASE_DELAY)
        return self.report

    def _open(self, s, issue_id: int, ids: list[int]):
        """The rows queued for this task with their readers; the next batch of the chain."""
        now = self.clock()
        mine = and_(Delivery.id.in_(ids), Delivery.status == D.SENDING,
                    Delivery.claimed_by == self.queued)
        if s.scalar(select(Issue.status).where(Issue.id == issue_id)) != IssueStatus.SENDING:
            s.execute(update(Delivery).where(mine).values(status=D.PENDING, claimed_by=None,
                                                           claimed_at=None)
                      .execution_options(synchronize_session=False))
            return None, []
        rows = s.execute(
            select(Delivery.id, Delivery.variant_id, Delivery.attempts, Subscriber.id,
                   Subscriber.email, Subscriber.name, Subscriber.uid, Subscriber.status)
            .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(mine)
            .order_by(Delivery.id)
        ).all()
        claimed, gone = [], []
        for did, variant_id, attempts, sub_id, email, name, uid, state in rows:
            if sub_id is None or state != SubscriberStatus.ACTIVE or variant_id is None:
                gone.append({"did": did, "err": f"not sent: the reader is {state or 'erased'}"})
            else:
                claimed.append(Claimed(did, sub_id, variant_id, attempts,
                                       Reader(did, email, name, uid)))
        if gone:
            # Readers who left after the send started are not mailed; attempts stay 0.
            s.execute(
                update(T).where(T.c.id == bindparam("did"), T.c.claimed_by == self.queued)
                .values(status=D.FAILED_PERMANENT, last_error=bindparam("err")),
                gone,
            )
            self.report.withdrawn += len(gone)
        self.report.claimed += len(claimed)
        after = max(ids) if ids else 0
        handed = deliveries.dispatch(s, issue_id, 1, deliveries.batch_size(self.settings),
                                     after=after, now=now)
        return claimed, handed

    def _build(self, group: list[Claimed]) -> dict[int, object]:
        return {c.id: self.variant(c.variant_id).build(c.reader) for c in group}

    def _begin(self, s, issue_id: int, group: list[Claimed]) -> set[int]:
        """Mark the group as tried, only while the issue is sending; the ids marked."""
        sending = select(Issue.id).where(Issue.id == issue_id, Issue.status == IssueStatus.SENDING)
        return set(
            s.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_([c.id for c in group]), Delivery.status == D.SENDING,
                    Delivery.claimed_by == self.queued, sending.exists(),
                )
                .values(claimed_by=self.tried, attempts=Delivery.attempts + 1,
                        claimed_at=self.clock())
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            ).scalars()
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

    def _release(self, s, rows: list[Claimed]) -> None:
        """The issue was paused: rows not tried go back to pending, for resume."""
        s.execute(
            update(Delivery)
            .where(Delivery.id.in_([c.id for c in rows]), Delivery.claimed_by == self.queued,
                   Delivery.status == D.SENDING)
            .values(status=D.PENDING, claimed_by=None, claimed_at=None)
            .execution_options(synchronize_session=False)
        )

    def _requeue(self, s, rows: list[Claimed], token: str) -> None:
        """Rows not tried yet move to the retry task (same state, a new token)."""
        s.execute(
            update(Delivery)
            .where(Delivery.id.in_([c.id for c in rows]), Delivery.claimed_by == self.queued,
                   Delivery.status == D.SENDING)
            .values(claimed_by=QUEUED + token, claimed_at=self.clock())
            .execution_options(synchronize_session=False)
        )

    def _prepare(self, outcomes: list[tuple[Claimed, Exception | None]]) -> dict:
        """Turn outcomes into the rows to write (and count them), outside any transaction."""
        now = self.clock()
        r = self.report
        sent, rows, bounced = [], [], []

        def row(c, state, err, attempts, nxt=None, by=None):
            rows.append({"did": c.id, "st": state, "err": err[:1000], "att": attempts,
                         "nxt": nxt, "by": by or self.tried, "at": now})

        for c, o in outcomes:
            if o is None:
                sent.append(c.id)
                continue
            err = str(o)
            r.errors.append(err)
            if isinstance(o, NotAttempted):  # to the retry task, this try not counted
                row(c, D.SENDING, UNREACHABLE + err, c.attempts, by=self._retry_token)
                r.released += 1
            elif isinstance(o, Uncertain):
                row(c, D.UNCERTAIN, err, c.attempts + 1)
                r.uncertain += 1
            elif isinstance(o, PermanentFailure):
                row(c, D.FAILED_PERMANENT, err, c.attempts + 1)
                bounced.append((c.subscriber_id, err))
                r.permanent += 1
            elif isinstance(o, TemporaryFailure):
                tries = c.attempts + 1
                if tries >= self.settings.retry_tries:
                    row(c, D.FAILED_PERMANENT, f"gave up after {tries} tries: {err}", tries)
                    r.permanent += 1
                else:
                    wait = timedelta(seconds=backoff(self.settings, tries))
                    row(c, D.FAILED_TEMPORARY, err, tries, nxt=now + wait)
                    r.temporary += 1
        r.sent += len(sent)
        return {"sent": sent, "rows": rows, "bounced": bounced, "now": now}

    def _write(self, s, prepared: dict | None) -> None:
        if not prepared:
            return
        now = prepared["now"]
        # Only rows this run still holds; `uncertain` too, as the sweeper may have judged a
        # slow run dead: what actually happened is better than a guess.
        # (No IN list: executemany cannot expand one.)
        mine = (T.c.claimed_by == self.tried) & or_(T.c.status == D.SENDING, T.c.status == D.UNCERTAIN)
        if prepared["sent"]:
            s.execute(
                update(T).where(T.c.id.in_(prepared["sent"]), mine)
                .values(status=D.SENT, sent_at=now, last_error=None, next_attempt_at=None)
            )
        if prepared["rows"]:
            rows = prepared["rows"]
            s.execute(
                update(T).where(T.c.id == bindparam("did"), mine)
                .values(status=bindparam("st"), last_error=bindparam("err"),
                        next_attempt_at=bindparam("nxt"), attempts=bindparam("att"),
                        claimed_by=bindparam("by"), claimed_at=bindparam("at")),
                rows,
            )
        if prepared["bounced"]:
            self._bounce(s, prepared["bounced"], now)

    def _bounce(self, s, bounced: list[tuple[int, str]], now) -> None:
        """A 5xx answer: the address is bad; the reader is marked bounced, never retried."""
        errors = dict(bounced)
        ids = list(s.scalars(
            update(Subscriber)
            .where(Subscriber.id.in_(list(errors)), Subscriber.status == SubscriberStatus.ACTIVE)
            .values(status=SubscriberStatus.BOUNCED, bounced_at=now)
            .returning(Subscriber.id)
            .execution_options(synchronize_session=False)
        ))
        if ids:
            s.execute(insert(SubscriberEvent), [
                {"subscriber_id": i, "at": now, "kind": "bounced", "detail": errors[i][:1000]}
                for i in ids
            ])

    def _after(self, s, issue_id: int) -> None:
        """Finish the issue if nothing is left; pause it if too much failed."""
        if deliveries.finish_if_done(s, issue_id, now=self.clock()):
            return
        r = self.report
        failed = r.temporary + r.permanent
        if failed < 10 or failed < (r.sent + failed) / 2:
            return
        counts = {state: n for state, n in s.execute(
            select(Delivery.status, func.count())
            .where(Delivery.issue_id == issue_id, Delivery.attempts > 0,
                   Delivery.status.in_([D.SENT, D.FAILED_TEMPORARY, D.FAILED_PERMANENT]))
            .group_by(Delivery.status)
        )}
        bad = counts.get(D.FAILED_TEMPORARY, 0) + counts.get(D.FAILED_PERMANENT, 0)
        tried = bad + counts.get(D.SENT, 0)
        if bad >= self.settings.pause_errors and bad >= 0.2 * tried:
            reason = (f"Paused automatically: {bad} of {tried} messages failed; "
                      f"the last answer was: {r.errors[-1]}")
            try:
                deliveries.pause(s, issue_id, reason)
                r.stopped = "paused automatically"
            except InvalidTransition:
                pass  # paused or cancelled meanwhile


def _retryable(e: DBAPIError) -> bool:
    code = getattr(e.orig, "sqlstate", None)
    return code in ("40P01", "40001") or "database is locked" in str(e.orig)

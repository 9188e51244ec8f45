"""One batch of deliveries: claim, send in small steps, record. The exactly-once protocol.

A task brings a few hundred delivery ids. Step by step:

1. claim: pending → sending (claimed_at, claimed_by = this run, next_attempt_at = a marker
   meaning "not tried yet"), in one conditional UPDATE: a second copy of the task, or a
   task for an issue paused meanwhile, claims nothing;
2. per group of `send_group` rows: one transaction records the previous group's outcomes
   and marks this group as tried (next_attempt_at = NULL), only if the issue is still
   sending; then the group goes out on the SMTP connection under the rate limit;
3. the last outcomes are recorded, and the issue finished if nothing is left.

So a crash at any point leaves at most one group per process in `sending` and tried: those
become `uncertain`; rows claimed but not tried go back to pending (services.deliveries.sweep).
This step needs commits between claiming and sending, so unlike other services the runner is
given a transaction factory (the task's db.transaction) rather than one session.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import bindparam, func, insert, or_, select, update
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

log = logging.getLogger(__name__)
D = DeliveryStatus
T = Delivery.__table__
UNREACHABLE = "unreachable: "
RELEASE_DELAY = 10.0  # seconds before rows the server never saw are tried again


def run_name() -> str:
    """claimed_by: which process and which run of a task holds a claim."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:10]}"


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
        enqueue: Callable[[list[int], float | None], object],
        worker: str | None = None,
        clock: Callable = utcnow,
    ):
        self.transaction = transaction
        self.transport = transport
        self.limiter = limiter
        self.variant = variant
        self.settings = settings
        self.enqueue = enqueue
        self.worker = worker or run_name()
        self.clock = clock
        self.report = BatchReport()

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

    def run(self, issue_id: int, ids: list[int]) -> BatchReport:
        claimed, handed = self._tx(lambda s: self._claim(s, issue_id, ids))
        for batch in handed:  # keep the window full while this batch sends
            self.enqueue(batch, None)
        if claimed is None:
            self.report.stopped = "issue not sending"
            return self.report
        size = self.settings.send_group
        prepared = None
        retry: list[int] = []
        for start in range(0, len(claimed), size):
            group = claimed[start : start + size]
            messages = self._build(group)
            done = prepared
            tried = self._tx(lambda s: self._write(s, done) or self._begin(s, issue_id, group))
            prepared = None
            if not tried:
                status = self._tx(lambda s: s.scalar(select(Issue.status).where(Issue.id == issue_id)))
                if status != IssueStatus.SENDING:
                    self._tx(lambda s: self._release(s, claimed[start:], None))
                    self.report.stopped = "issue paused or cancelled"
                    break
                continue  # the sweeper took these rows back: another task sends them
            batch = [c for c in group if c.id in tried]
            outcomes = list(zip(batch, self._send([messages[c.id] for c in batch]), strict=True))
            prepared = self._prepare(outcomes)
            unreachable = [o for _, o in outcomes if isinstance(o, NotAttempted)]
            if unreachable:
                rest = claimed[start + size :]
                if rest:
                    self._tx(lambda s: self._release(s, rest, str(unreachable[0])))
                retry = [c.id for c, o in outcomes if isinstance(o, NotAttempted)]
                retry += [c.id for c in rest]
                self.report.released += len(rest)
                self.report.stopped = "server unreachable"
                break
        done = prepared
        self._tx(lambda s: self._write(s, done) or self._after(s, issue_id))
        if retry:
            # Rows the server never saw: handed out again, after a short pause.
            self.enqueue(retry, RELEASE_DELAY + 1)
        return self.report

    def _claim(self, s, issue_id: int, ids: list[int]):
        now = self.clock()
        if s.scalar(select(Issue.status).where(Issue.id == issue_id)) != IssueStatus.SENDING:
            return None, []
        rows = s.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(ids), Delivery.issue_id == issue_id, Delivery.status == D.PENDING,
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
            .values(status=D.SENDING, claimed_at=now, claimed_by=self.worker, next_attempt_at=now)
            .returning(Delivery.id, Delivery.subscriber_id, Delivery.variant_id, Delivery.attempts)
            .execution_options(synchronize_session=False)
        ).all()
        readers = {
            r.id: r for r in s.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.uid,
                       Subscriber.status)
                .where(Subscriber.id.in_([r.subscriber_id for r in rows if r.subscriber_id]))
            )
        }
        claimed, gone = [], []
        for r in sorted(rows, key=lambda r: r.id):
            sub = readers.get(r.subscriber_id)
            if sub is None or sub.status != SubscriberStatus.ACTIVE or r.variant_id is None:
                state = sub.status if sub is not None else "erased"
                gone.append({"did": r.id, "err": f"not sent: the reader is {state}"})
            else:
                claimed.append(Claimed(r.id, sub.id, r.variant_id, r.attempts,
                                       Reader(r.id, sub.email, sub.name, sub.uid)))
        if gone:
            # Readers who left after the send started are not mailed; attempts stay 0.
            s.execute(
                update(T).where(T.c.id == bindparam("did"), T.c.claimed_by == self.worker)
                .values(status=D.FAILED_PERMANENT, last_error=bindparam("err"),
                        next_attempt_at=None),
                gone,
            )
            self.report.withdrawn += len(gone)
        self.report.claimed += len(claimed)
        handed = deliveries.dispatch(s, issue_id, 1, deliveries.batch_size(self.settings), now=now)
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
                    Delivery.claimed_by == self.worker, Delivery.next_attempt_at.is_not(None),
                    sending.exists(),
                )
                .values(next_attempt_at=None, attempts=Delivery.attempts + 1,
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

    def _release(self, s, rows: list[Claimed], error: str | None) -> None:
        """Rows claimed but never seen by the server go back to pending."""
        ids = [c.id for c in rows]
        if not ids:
            return
        now = self.clock()
        values = dict(status=D.PENDING, claimed_by=None, claimed_at=None, next_attempt_at=None)
        if error is not None:  # server unreachable: handed out again after a pause
            values.update(claimed_at=now, last_error=(UNREACHABLE + error)[:1000],
                          next_attempt_at=now + timedelta(seconds=RELEASE_DELAY))
        s.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.claimed_by == self.worker,
                   Delivery.status == D.SENDING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )

    def _prepare(self, outcomes: list[tuple[Claimed, Exception | None]]) -> dict:
        """Turn outcomes into the rows to write (and count them), outside any transaction."""
        now = self.clock()
        r = self.report
        sent, rows, bounced = [], [], []

        def row(c, state, err, attempts, nxt=None, by=None):
            rows.append({"did": c.id, "st": state, "err": err[:1000], "att": attempts,
                         "nxt": nxt, "by": by or self.worker, "at": now})

        for c, o in outcomes:
            if o is None:
                sent.append(c.id)
                continue
            err = str(o)
            r.errors.append(err)
            if isinstance(o, NotAttempted):  # back to pending, this try not counted
                row(c, D.PENDING, UNREACHABLE + err, c.attempts,
                    nxt=now + timedelta(seconds=RELEASE_DELAY), by="")
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
        mine = (T.c.claimed_by == self.worker) & or_(T.c.status == D.SENDING, T.c.status == D.UNCERTAIN)
        if prepared["sent"]:
            s.execute(
                update(T).where(T.c.id.in_(prepared["sent"]), mine)
                .values(status=D.SENT, sent_at=now, last_error=None, next_attempt_at=None)
            )
        if prepared["rows"]:
            rows = [{**r, "by": r["by"] or None} for r in prepared["rows"]]
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

"""Sending issues: batch tasks on the `send` queue, and the delivery sweeper in the tick.

Starting, resuming or re-sending an issue records its batches on the caller's session
(services.after_commit); the commit hands them to send_batch. A running batch hands out the
next one of its chain, or a retry, itself (BatchRunner's enqueue). A batch the broker does not
take (Redis down) goes back to pending at once, and the sweeper hands it out again once
the broker is back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from celery import shared_task
from sqlalchemy import select

from mailer.db import db
from mailer.mail.compiled import CompiledVariant
from mailer.mail.sender import newsletter_sender
from mailer.mail.transport import Transport, transport_from_settings
from mailer.models import Issue, IssueVariant
from mailer.runtime import Runtime, runtime
from mailer.services import deliveries
from mailer.services.deliveries import Batch
from mailer.services.delivery_batches import BatchRunner
from mailer.tasks.base import REFUSED, enqueue, register_tick_step

log = logging.getLogger(__name__)

# A threads worker (the embedded mode) runs several batches at once in one process: each
# thread keeps its own SMTP connection. A prefork child has one thread, so one connection.
_local = threading.local()
_compiled: dict[tuple[int, int], tuple[object, CompiledVariant]] = {}
_compiled_lock = threading.Lock()


def _transport(rt: Runtime) -> Transport:
    if getattr(_local, "pid", None) != os.getpid() or getattr(_local, "rt", None) is not rt:
        _local.transport = transport_from_settings(rt.settings)
        _local.pid, _local.rt = os.getpid(), rt
    return _local.transport


def _variants(rt: Runtime) -> Callable[[int], CompiledVariant]:
    """variant id -> CompiledVariant, compiled once per process (checked once per batch)."""
    seen: dict[int, CompiledVariant] = {}

    def get(variant_id: int) -> CompiledVariant:
        if variant_id in seen:
            return seen[variant_id]
        with db.transaction() as s:
            created = s.scalar(select(IssueVariant.created_at).where(IssueVariant.id == variant_id))
            key = (id(rt), variant_id)
            cached = _compiled.get(key)
            if cached is None or cached[0] != created:
                v = s.get(IssueVariant, variant_id)
                issue = s.get(Issue, v.issue_id)
                # The From, Reply-To and List-Id of the issue's newsletter, and its id for
                # the readers' unsubscribe and preferences links.
                compiled = rt.compile(v, newsletter_sender(rt.settings, issue.newsletter),
                                      issue.newsletter_id)
                with _compiled_lock:
                    if len(_compiled) >= 64:
                        _compiled.clear()
                    _compiled[key] = cached = (created, compiled)
        seen[variant_id] = cached[1]
        return cached[1]

    return get


def _enqueue_batch(issue_id: int, batch: Batch, countdown: float | None) -> bool:
    """A batch the runner handed out (after its own commit): the chain's next, or a retry."""
    options = {"countdown": countdown} if countdown else {}
    if enqueue(send_batch, issue_id, batch.ids, batch.token, batch.chain, **options):
        return True
    _refused(issue_id, batch.ids, batch.token)
    return False


def _refused(issue_id: int, ids: list[int], token: str, *_chain) -> None:
    """A batch the broker did not take goes back to pending now, not after the lease."""
    try:
        with db.transaction() as s:
            deliveries.release(s, Batch(token, ids))
    except Exception:  # noqa: BLE001 - the lease releases them later
        log.warning("could not release batch %s of issue %s", token, issue_id, exc_info=True)


REFUSED[deliveries.SEND_BATCH] = _refused


@shared_task(name=deliveries.SEND_BATCH, acks_late=True, reject_on_worker_lost=True)
def send_batch(issue_id: int, ids: list[int], token: str, chain: bool = True) -> dict:
    """Try, send and record the deliveries handed to this task (services.delivery_batches)."""
    rt = runtime()
    runner = BatchRunner(
        engine=db.engine,
        transport=_transport(rt),
        limiter=rt.limiter,
        variant=_variants(rt),
        settings=rt.settings,
        enqueue=lambda batch, delay: _enqueue_batch(issue_id, batch, delay),
    )
    report = runner.run(issue_id, ids, token, chain)
    if report.stopped:
        log.info("issue %s batch stopped: %s", issue_id, report.stopped)
    return report.as_dict()


def sweep_deliveries() -> dict:
    """The tick step: stuck claims, lost batches, due retries, finished issues."""
    rt = runtime()
    with db.transaction() as s:
        result = deliveries.sweep(s, rt.settings)  # the batches go to workers at the commit
    out = {k: v for k, v in result.__dict__.items() if k != "batches" and v}
    if result.batches:
        out["batches"] = sum(len(b) for b in result.batches.values())
    return out


register_tick_step(sweep_deliveries)

"""Outgoing webhooks: one task per delivery attempt, the sweeper, the retention of the
history, and telling ops when an endpoint is disabled. The protocol (claim, attempt,
record) is in services.hooks."""

from __future__ import annotations

import html
import logging
from datetime import timedelta

from celery import shared_task

from mailer.clock import utcnow
from mailer.db import db
from mailer.hooks import signing
from mailer.mail.errors import DeliveryError
from mailer.runtime import runtime
from mailer.services import hooks
from mailer.tasks.base import REFUSED, register_tick_step

log = logging.getLogger(__name__)


@shared_task(name=hooks.TASK, acks_late=True)
def deliver_webhook(delivery_id: int) -> str:
    """One attempt of one delivery: claim, POST signed, record (see services.hooks)."""
    # Here, not at the top: a sending worker should not carry the HTTP client.
    from mailer.hooks import post

    settings = runtime().settings
    with db.transaction() as s:
        attempt = hooks.claim(s, delivery_id)
    if attempt is None:
        return "not due"
    now = utcnow()
    headers = signing.headers(attempt.secret, attempt.msg_id, int(now.timestamp()), attempt.body)
    outcome = post.post(attempt.url, attempt.body, headers,
                        allow_http=settings.webhook_allow_http,
                        allow_private=settings.webhook_allow_private)
    with db.transaction() as s:
        recorded = hooks.record(
            s, attempt, ok=outcome.ok, status_code=outcome.status,
            latency_ms=outcome.latency_ms, excerpt=outcome.excerpt, refused=outcome.refused,
            retries=settings.webhook_retries,
            disable_after=timedelta(hours=settings.webhook_disable_hours),
        )
        disabled = recorded and recorded.disabled_endpoint
        if disabled:
            url, reason = disabled.url, disabled.disabled_reason
    if recorded is None:
        return "claim lost"
    if disabled:
        tell_ops(url, reason)
    if not outcome.ok:
        log.info("webhook delivery %s attempt %s to %s failed: %s %s", delivery_id,
                 attempt.attempt, attempt.url, outcome.status, outcome.excerpt[:200])
    return str(recorded.status)


def tell_ops(url: str, reason: str) -> None:
    """A disabled endpoint: a warning in the log (the console shows it on its page) and a
    mail to MAILER_OPS_EMAIL, like a schedule's report."""
    log.warning("webhook endpoint %s disabled: %s", url, reason)
    rt = runtime()
    settings = rt.settings
    if not settings.ops_email:
        return
    text = (
        f"The webhook endpoint {url} was disabled.\n\n{reason}\n\n"
        f"Its undelivered events wait; enable it again in the console once it answers:\n"
        f"{settings.base_url}/admin/webhooks\n"
    )
    subject = f"[{settings.list_name}] webhook endpoint disabled: {url}"[:250]
    for to in [a.strip() for a in settings.ops_email.split(",") if a.strip()]:
        out = rt.composer.message(to=to, subject=subject, text=text,
                                  html=f"<pre>{html.escape(text)}</pre>")
        try:
            rt.transport.send(out.envelope_from, out.recipient, out.data)
        except DeliveryError as e:
            log.warning("could not tell %s that a webhook endpoint was disabled: %s", to, e)


def sweep_webhooks() -> dict:
    """The tick step: released attempts of dead workers, due retries, lost hand-outs."""
    with db.transaction() as s:
        return hooks.sweep(s)


# The retention's work per tick: batches of PRUNE_BATCH rows, one transaction each, at most
# PRUNE_BATCHES of them (a backlog of years goes in steps, never one long transaction).
PRUNE_BATCH = 1000
PRUNE_BATCHES = 10


def prune_webhook_history() -> dict | None:
    """The tick step: finished deliveries and their events older than
    MAILER_WEBHOOK_KEEP_DAYS are deleted (services.hooks.prune); None when kept forever."""
    keep_days = runtime().settings.webhook_keep_days
    if not keep_days:
        return None
    keep, now = timedelta(days=keep_days), utcnow()
    done = {"deliveries": 0, "events": 0}
    for _ in range(PRUNE_BATCHES):
        with db.transaction() as s:
            batch = hooks.prune(s, keep, now, limit=PRUNE_BATCH)
        for what, n in batch.items():
            done[what] += n
        if max(batch.values()) < PRUNE_BATCH:
            break
    return done


def _refused(delivery_id: int) -> None:
    with db.transaction() as s:
        hooks.not_handed_out(s, delivery_id)


REFUSED[hooks.TASK] = _refused
register_tick_step(sweep_webhooks)
register_tick_step(prune_webhook_history)

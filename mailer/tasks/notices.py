"""Transactional mail to one reader: confirmation, welcome, change of address."""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta

from celery import shared_task

from mailer import redis_client
from mailer.clock import utcnow
from mailer.db import db
from mailer.mail.errors import PermanentFailure, TemporaryFailure
from mailer.models import Subscriber, SubscriberStatus
from mailer.runtime import runtime
from mailer.services import looks, subscriptions
from mailer.tasks.base import RETRY, enqueue, register_tick_step

log = logging.getLogger(__name__)


# A signup pushes its confirmation just before its COMMIT (web.signup_gate): a worker that
# is quicker than the COMMIT finds nothing to claim yet and tries again, this often, this
# long apart.
COMMIT_WAITS = 10
COMMIT_WAIT = 0.3
NOT_COMMITTED = "not committed"
RECLAIMS = 3


def _take(subscriber_id: int, since: datetime | None, waits: int, at_once=None):
    """The claimed confirmation (subscriptions.take_confirmation), or why there is none.

    With `at_once` (a PostgreSQL connection in autocommit mode, see _claims), the claim is
    first tried as a statement that is its own transaction; only when that claims nothing
    does the look below run (the claim counting as the first).

    The common case is one transaction: the claim itself is conditional on the request
    `since` being committed and visible. Only when it claims nothing does a second look
    tell a request not committed yet (wait, `waits` times at most, then NOT_COMMITTED) from
    a mail not owed. The look is a statement of its own, which sees what was committed
    when it began (READ COMMITTED): a signup's COMMIT that lands between the claim and the
    look shows the mail still owed there, and it is claimed again at once (RECLAIMS times
    at most), not taken for a mail already sent."""
    claimed_at_once = False
    if at_once is not None:
        taken = subscriptions.take_confirmation_at_once(at_once, subscriber_id, since)
        if taken is not None:
            return taken, None
        claimed_at_once = True  # and found nothing: straight to the look
    attempt = reclaims = 0
    while True:
        with db.transaction() as s:
            taken = None if claimed_at_once else subscriptions.take_confirmation(
                s, subscriber_id, since)
            claimed_at_once = False
            if taken is not None:
                return taken, None
            sub = s.get(Subscriber, subscriber_id)
            asked = sub.confirm_requested_at if sub is not None else None
            committed = since is None or (asked is not None and asked >= since)
            if committed:
                if sub is None or not (
                    subscriptions.may_confirm(sub) or sub.status == SubscriberStatus.ACTIVE
                ):
                    return None, "not pending"
                if not subscriptions.confirmation_owed(sub):
                    return None, "already sent"
                if reclaims >= RECLAIMS:  # owed, visible, yet never claimed: a bug
                    log.warning("confirmation to subscriber %s owed but not claimed",
                                subscriber_id)
                    return None, "not claimed"
        if committed:  # committed just after the claim looked: claim it now
            reclaims += 1
            continue
        if attempt >= waits:
            return None, NOT_COMMITTED
        attempt += 1
        time.sleep(COMMIT_WAIT)


def _mail(rt, subscriber_id: int, since: datetime | None, waits: int, at_once=None) -> str:
    """Claim and send one confirmation; its outcome ("sent", "already sent", ...). Raises
    TemporaryFailure after giving the claim back."""
    taken, why_not = _take(subscriber_id, since, waits, at_once)
    if taken is None:
        return why_not
    look = looks.look_from(taken.look, rt.settings) if taken.look else looks.plain(rt.settings)
    if taken.already_subscribed:
        out = rt.notices.already_subscribed(taken.email, taken.uid, look)
    else:
        out = rt.notices.confirmation(taken.email, taken.uid, taken.requested, look,
                                      taken.newsletters)
    try:
        rt.transport.send(out.envelope_from, out.recipient, out.data)
    except TemporaryFailure:
        with db.transaction() as s:  # give the claim back so a retry can take it
            subscriptions.release_confirmation(s, subscriber_id, taken.requested)
        raise
    except PermanentFailure as e:
        log.info("confirmation to subscriber %s refused: %s", subscriber_id, e)
        return "refused"
    return "sent"


# A request still not visible after the waits was rolled back, or is committed late (a web
# process starved of CPU, a slow fsync): the task looks again this often, this long apart,
# without holding a worker process in between, before it settles for whatever is owed then
# (the sweeper stays the backstop, CONFIRMATION_GRACE).
LATE_LOOKS = 15
LATE_LOOK_AFTER = 2  # seconds


@shared_task(name="mailer.send_confirmation", **RETRY)
def send_confirmation(subscriber_id: int, requested: str | None = None, looked: int = 0) -> str:
    """Mail the confirmation owed to a reader (to an active reader who signed up again: a
    short "you are already subscribed" with the preferences link). `requested` (ISO time)
    names the request the message was pushed for; until that request is committed and
    visible, the task waits (COMMIT_WAITS), then looks again later (LATE_LOOKS; `looked`:
    how many times it did)."""
    rt = runtime()
    since = datetime.fromisoformat(requested) if requested else None
    outcome = _mail(rt, subscriber_id, since, 0 if looked else COMMIT_WAITS)
    if outcome == NOT_COMMITTED and looked < LATE_LOOKS and enqueue(
        send_confirmation, subscriber_id, requested, looked + 1, countdown=LATE_LOOK_AFTER
    ):
        return "not committed yet"
    if outcome == NOT_COMMITTED:  # rolled back, or replaced meanwhile: whatever is owed now
        outcome = _mail(rt, subscriber_id, None, 0)
    return outcome


# With Redis, a signup does not push a task per confirmation. Its script (web.signup_gate)
# pushes the confirmation (reader and request) onto the CONFIRMATIONS list, and a
# `send_confirmations` task only when no task is draining that list (DRAINING, set by the
# script, renewed by the task while it works, dropped when it finds the list empty). Under
# load one task mails many confirmations, so the broker's and Celery's work per task (a
# good half of a worker's CPU per confirmation) is paid per drain, not per mail. Each
# confirmation is still claimed in a transaction of its own before it is sent. A worker
# that dies holding entries loses nothing: their confirmations stay owed in SQL and the
# sweeper hands them over (CONFIRMATION_GRACE); DRAINING expires and the next signup
# starts a new drain.
CONFIRMATIONS = "mailer-confirmations"
DRAINING = "mailer-confirmations-draining"
DRAINING_TTL = 30  # seconds
DRAIN_TAKE = 20  # entries taken from the list at a time
DRAIN_LINGER = 0.2  # seconds a drain waits on an empty list before it ends


def confirmation_entry(subscriber_id: int, requested: datetime) -> bytes:
    """A confirmation on the CONFIRMATIONS list: the reader and the request it answers."""
    return f"{subscriber_id} {requested.isoformat()}".encode()


def _redis(settings):
    """This process's client of the Redis the signups push onto. It does not degrade: a
    drain that fails raises, and Celery retries it."""
    return redis_client.client(settings.redis_url, timeout=5)


@shared_task(name="mailer.send_confirmations", **RETRY)
def send_confirmations() -> dict:
    """Mail the confirmations on the CONFIRMATIONS list until it is empty: the outcomes."""
    rt = runtime()
    client = _redis(rt.settings)
    try:
        return _drain(rt, client)
    except Exception:
        # The entries taken stay owed in SQL (the sweeper's); the next signup may start a
        # drain at once instead of after DRAINING_TTL.
        client.delete(DRAINING)
        raise


def _drain(rt, client) -> dict:
    # One connection for the whole drain: a drain that keeps up takes a few entries at a
    # time, and a connection per take cost more than their claims.
    with _claims() as at_once:
        return _drain_on(rt, client, at_once)


def _take_entries(held) -> list[bytes] | None:
    """Up to DRAIN_TAKE entries, the oldest first; on an empty list, wait DRAIN_LINGER for
    the next one. Signups arrive one by one, each after its COMMIT: a worker that keeps up
    finds the list empty after every few. Waiting a moment for the next one (a blocking
    pop, no CPU) keeps one drain going through a burst, instead of a task, with the
    broker's and Celery's work around it, for every few confirmations. One command
    (BLMPOP, Redis 7) on the drain's held connection: it answers at once when the list has
    entries, and takes every entry there is, up to DRAIN_TAKE, when one arrives."""
    taken = held.command("BLMPOP", DRAIN_LINGER, 1, CONFIRMATIONS, "RIGHT",
                         "COUNT", DRAIN_TAKE)
    return taken[1] if taken else None


def _drain_on(rt, client, at_once) -> dict:
    done: Counter = Counter()
    held = redis_client.held(client)
    kept_until = 0.0  # DRAINING's lifetime renewed: not before this (monotonic)
    while True:
        entries = _take_entries(held)
        if not entries:
            client.delete(DRAINING)
            # A signup that pushed after the last pop and before the delete saw DRAINING
            # and queued no task: if the list is not empty, take it up again (unless that
            # signup's own task has it already).
            if not client.llen(CONFIRMATIONS) or not client.set(
                DRAINING, 1, nx=True, ex=DRAINING_TTL
            ):
                return dict(done)
            continue
        if time.monotonic() >= kept_until:
            # Renewed a third of its lifetime at most: a command per take cost as much
            # as the take.
            client.expire(DRAINING, DRAINING_TTL)
            kept_until = time.monotonic() + DRAINING_TTL / 3
        later = []
        for entry in entries:
            sub_id, requested = entry.decode().split(" ", 1)
            confirmation = (int(sub_id), datetime.fromisoformat(requested))
            # A request not committed yet is tried again after the others, not before.
            outcome = _drained(rt, *confirmation, waits=0, at_once=at_once)
            if outcome == NOT_COMMITTED:
                later.append(confirmation)
            else:
                done[outcome] += 1
        for sub_id, since in later:
            outcome = _drained(rt, sub_id, since, waits=0, at_once=at_once)
            if outcome == NOT_COMMITTED:
                # Still not visible: a task of its own waits for it (send_confirmation),
                # so a request that never commits holds up no other reader's mail.
                enqueue(send_confirmation, sub_id, since.isoformat())
                outcome = "handed over"
            done[outcome] += 1


@contextmanager
def _claims():
    """One connection for a drain's claims: on PostgreSQL, in autocommit mode, so each
    claim is one statement and one round trip (_take's `at_once`), still committed before
    its mail is sent: a worker killed mid-drain leaves at most the one confirmation it was
    sending claimed and unsent, as before. Elsewhere None (SQLite's claim is two
    statements, which need their transaction)."""
    if db.engine.dialect.name != "postgresql":
        yield None
        return
    with db.autocommit() as connection:
        yield connection


def _drained(rt, subscriber_id: int, since: datetime | None, waits: int, at_once=None) -> str:
    """One confirmation of a drain; one the SMTP server deferred goes back to a task of
    its own, with the usual retries."""
    try:
        return _mail(rt, subscriber_id, since, waits, at_once)
    except TemporaryFailure as e:
        log.info("confirmation to subscriber %s deferred: %s", subscriber_id, e)
        enqueue(send_confirmation, subscriber_id, countdown=RETRY["retry_backoff"])
        return "deferred"


@shared_task(name="mailer.send_welcome", **RETRY)
def send_welcome(subscriber_id: int) -> str:
    rt = runtime()
    with db.transaction() as s:
        sub = s.get(Subscriber, subscriber_id)
        if sub is None or sub.status != SubscriberStatus.ACTIVE:
            return "not active"
        out = rt.notices.welcome(sub.email, sub.uid, looks.site_look(s, rt.settings))
    try:
        rt.transport.send(out.envelope_from, out.recipient, out.data)
    except PermanentFailure as e:
        log.info("welcome to subscriber %s refused: %s", subscriber_id, e)
        return "refused"
    return "sent"


@shared_task(name="mailer.send_email_change", **RETRY)
def send_email_change(subscriber_id: int, new_email: str) -> str:
    rt = runtime()
    with db.transaction() as s:
        sub = s.get(Subscriber, subscriber_id)
        if sub is None or sub.pending_email != new_email:
            return "withdrawn"
        out = rt.notices.email_change(new_email, sub.uid, looks.site_look(s, rt.settings))
    try:
        rt.transport.send(out.envelope_from, out.recipient, out.data)
    except PermanentFailure:
        return "refused"
    return "sent"


# A confirmation still owed this long after it was asked for was not handed to a worker
# (Redis was down) or the message was lost: the sweeper hands it over again.
CONFIRMATION_GRACE = 60


def sweep_confirmations() -> int:
    """Re-enqueue confirmations committed but never handed to the broker (or lost)."""
    settings = runtime().settings
    now = utcnow()
    with db.transaction() as s:
        owed = subscriptions.confirmations_owed(
            s,
            older_than=now - timedelta(seconds=CONFIRMATION_GRACE),
            newer_than=now - timedelta(hours=settings.confirm_ttl_hours),
        )
    for sub_id in owed:
        enqueue(send_confirmation, sub_id)
    return len(owed)


register_tick_step(sweep_confirmations)

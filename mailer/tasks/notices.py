"""Transactional mail to one reader: confirmation, welcome, change of address."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from celery import shared_task

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


def _take(subscriber_id: int, since: datetime | None):
    """The claimed confirmation (subscriptions.take_confirmation), or why there is none.

    The common case is one transaction: the claim itself is conditional on the request
    `since` being committed and visible. Only when it claims nothing does a second look
    tell a request not committed yet (wait, then claim again) from a mail not owed."""
    for attempt in range(COMMIT_WAITS + 1):
        if attempt == COMMIT_WAITS:
            since = None  # rolled back, or replaced meanwhile: whatever is owed now
        with db.transaction() as s:
            taken = subscriptions.take_confirmation(s, subscriber_id, since)
            if taken is not None:
                return taken, None
            sub = s.get(Subscriber, subscriber_id)
            asked = sub.confirm_requested_at if sub is not None else None
            if since is None or (asked is not None and asked >= since):
                if sub is None or not (
                    subscriptions.may_confirm(sub) or sub.status == SubscriberStatus.ACTIVE
                ):
                    return None, "not pending"
                return None, "already sent"
        time.sleep(COMMIT_WAIT)
    raise AssertionError("unreachable: the last attempt claims whatever is owed")


@shared_task(name="mailer.send_confirmation", **RETRY)
def send_confirmation(subscriber_id: int, requested: str | None = None) -> str:
    """Mail the confirmation owed to a reader (to an active reader who signed up again: a
    short "you are already subscribed" with the preferences link). `requested` (ISO time)
    names the request the message was pushed for; until that request is committed and
    visible, the task waits."""
    rt = runtime()
    taken, why_not = _take(subscriber_id, datetime.fromisoformat(requested) if requested else None)
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

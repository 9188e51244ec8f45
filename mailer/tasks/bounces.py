"""The bounce mailbox's poller: a step of the tick, and `mailer bounces poll` by hand.

One poller at a time across every worker, beat and host: it holds a lock row in the
database (services.workers.take_lock) while it runs. For each waiting message, by UID: read
it (up to MAILER_BOUNCE_MAX_BYTES), record its reports and COMMIT, and only then move it to
MAILER_BOUNCE_MAILBOX_DONE (or delete it). A crash in between leaves the message in the
folder and the next poll records it again, which changes nothing (each report is recorded
once under its key). A server that cannot be reached: logged in one line, nothing lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mailer.tasks.base import register_tick_step

log = logging.getLogger(__name__)

LOCK = "bounce-mailbox"
DUE = "bounce-mailbox-due"
BATCH = 200  # messages per poll; the next poll takes the rest
LEASE = 600.0  # seconds after which a dead poller's lock is taken over


@dataclass
class PollResult:
    messages: int = 0
    results: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None  # why nothing was polled: another poller, no mailbox


def poll(settings, *, holder: str | None = None) -> PollResult:
    """Fetch, record and file away the waiting messages. MailboxError when the server
    cannot be reached or used (nothing is lost: the messages stay where they are)."""
    from mailer.bounces import Source
    from mailer.bounces.mailbox import Mailbox, parse_url
    from mailer.bounces.parse import ignored, parse_message
    from mailer.clock import utcnow
    from mailer.db import db
    from mailer.services import bounces, workers

    result = PollResult()
    if not settings.bounce_mailbox:
        result.skipped = "no MAILER_BOUNCE_MAILBOX"
        return result
    holder = holder or workers.process_name()
    with db.transaction() as s:
        if not workers.take_lock(s, LOCK, holder, LEASE, utcnow()):
            result.skipped = "another poller is running"
            return result
    done_folder = None if settings.bounce_mailbox_done.lower() == "delete" else (
        settings.bounce_mailbox_done)
    try:
        with Mailbox(parse_url(settings.bounce_mailbox),
                     ca_file=settings.bounce_mailbox_ca_file) as box:
            uids = box.uids(BATCH)
            sizes = box.sizes(uids) if uids else {}
            for uid in uids:
                if sizes.get(uid, 0) > settings.bounce_max_bytes:
                    reports = [ignored(f"imap-too-big-{uid}",
                                       f"larger than {settings.bounce_max_bytes} bytes",
                                       Source.IMAP)]
                else:
                    raw = box.fetch(uid)
                    if raw is None:
                        continue  # deleted by someone else meanwhile
                    reports = parse_message(raw, source=Source.IMAP,
                                            bounce_domain=settings.bounce_domain)
                with db.transaction() as s:
                    for report in reports:
                        outcome = bounces.record(s, settings, report)
                        result.results[outcome.result] = result.results.get(outcome.result, 0) + 1
                        log.info("bounce mailbox message %s: %s%s", uid, outcome.result,
                                 f" ({outcome.reason})" if outcome.reason else "")
                box.file_away([uid], done_folder)
                result.messages += 1
    finally:
        with db.transaction() as s:
            workers.release_lock(s, LOCK, holder)
    return result


@register_tick_step
def bounce_mailbox() -> str:
    """The tick's step: poll when MAILER_BOUNCE_POLL_SECONDS have passed since the last."""
    from mailer.bounces.mailbox import MailboxError
    from mailer.clock import utcnow
    from mailer.db import db
    from mailer.runtime import runtime
    from mailer.services import workers

    settings = runtime().settings
    if not settings.bounce_mailbox:
        return "off"
    with db.transaction() as s:
        if not workers.take_turn(s, workers.process_name(), settings.bounce_poll_seconds,
                                 utcnow(), name=DUE):
            return "not due"
    try:
        result = poll(settings)
    except MailboxError as e:
        log.warning("bounce mailbox unreachable, trying again later: %s", e)
        return "unreachable"
    return result.skipped or f"{result.messages} messages"

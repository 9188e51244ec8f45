"""Work started from the console: CSV imports, and issues an editor set to go at a time."""

from __future__ import annotations

import logging

from celery import shared_task

from mailer.clock import utcnow
from mailer.db import db
from mailer.errors import InvalidTransition
from mailer.models import SubscriberImport
from mailer.runtime import runtime
from mailer.services import deliveries, send_times
from mailer.services import subscriber_admin as admin
from mailer.tasks.base import enqueue, register_tick_step

log = logging.getLogger(__name__)


@shared_task(name="mailer.import_subscribers", acks_late=True)
def import_subscribers(import_id: int) -> str:
    """Work through an uploaded CSV in chunks, one transaction each (progress as it goes)."""
    rt = runtime()
    with db.transaction() as s:
        if not admin.claim_import(s, import_id):
            return "not queued"
        imp = s.get(SubscriberImport, import_id)
        text, done = imp.body or "", imp.done
    try:
        rows = admin.import_rows_of(text)
        while done < len(rows):
            chunk = rows[done : done + admin.IMPORT_CHUNK]
            with db.transaction() as s:
                mine = admin.import_chunk(s, import_id, done, chunk, hasher=rt.email_hash,
                                          known_sections=rt.settings.section_labels)
            if not mine:
                return "taken over"
            done += len(chunk)
    except Exception as e:  # noqa: BLE001 - recorded on the import for the operator to see
        log.exception("import %s failed", import_id)
        with db.transaction() as s:
            admin.fail_import(s, import_id, f"The import stopped: {e}")
        return "failed"
    return "finished"


def start_due_issues() -> dict:
    """The tick step: start the issues whose send time has come."""
    rt = runtime()
    now = utcnow()
    with db.transaction() as s:
        due = send_times.due(s, now)
    started = 0
    for issue_id in due:
        try:
            with db.transaction() as s:
                if not send_times.claim_due(s, issue_id, now):
                    continue  # unscheduled or started meanwhile
                deliveries.start_send(s, issue_id, settings=rt.settings, now=now)
        except InvalidTransition:
            continue
        except Exception:  # noqa: BLE001 - one broken issue must not hold up the others
            log.exception("scheduled issue %s could not start", issue_id)
            continue
        started += 1
    return {"started": started} if started else {}


def resume_imports() -> int:
    """The tick step: hand imports no worker is on (broker down, worker killed) to a worker."""
    with db.transaction() as s:
        owed = admin.imports_owed(s)
    for import_id in owed:
        enqueue(import_subscribers, import_id)
    return len(owed)


register_tick_step(start_due_issues)
register_tick_step(resume_imports)

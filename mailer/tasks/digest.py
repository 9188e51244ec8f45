"""Test sends of a digest issue: the preview, mailed to an editor's own addresses."""

from __future__ import annotations

import logging

from celery import shared_task

from mailer.db import db
from mailer.errors import NotFound
from mailer.mail.errors import PermanentFailure
from mailer.models import Issue
from mailer.runtime import runtime
from mailer.services import digests
from mailer.tasks.base import RETRY

log = logging.getLogger(__name__)


@shared_task(name="mailer.send_test_issue", **RETRY)
def send_test(issue_id: int, address: str, sections: str = "") -> str:
    """One address per task, so a retry after a temporary failure re-sends nothing else."""
    rt = runtime()
    with db.transaction() as s:
        issue = s.get(Issue, issue_id)
        if issue is None:
            return "no such issue"
        try:
            (out,) = digests.test_messages(s, rt.composer, issue, [address], sections)
        except NotFound:
            return "no items for these sections"
    try:
        rt.transport.send(out.envelope_from, out.recipient, out.data)
    except PermanentFailure as e:
        log.info("test send of issue %s refused: %s", issue_id, e)
        return "refused"
    return "sent"

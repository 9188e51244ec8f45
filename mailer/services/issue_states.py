"""The states of an issue and every change between them: one table, one conditional UPDATE.

    draft ──schedule──► scheduled ──unschedule──► draft
    draft ──skip──► skipped                (composed with too few new articles)
    draft, scheduled ──start──► sending ──pause──► paused ──resume──► sending
    sending ──finish──► finished ──reopen──► sending      (uncertain rows re-sent)
    draft, scheduled, sending, paused ──cancel──► cancelled

A change is one UPDATE ... WHERE status IN (its sources): two editors, a double click, the
scheduler's tick and an operator racing each other get exactly one change through, and the
others InvalidTransition (or NotFound for an issue that does not exist). Callers pass the
columns that change with the state (started_at, status_reason, send_at, ...).

The webhooks' issue events are emitted here, in the same transaction as the change:
issue.sending (started, resumed, reopened), issue.paused, issue.finished, issue.skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import InvalidTransition, NotFound
from mailer.models import Issue, IssueStatus, Newsletter
from mailer.services import hooks

DRAFT, SCHEDULED, SENDING, PAUSED, FINISHED, CANCELLED, SKIPPED = (
    IssueStatus.DRAFT, IssueStatus.SCHEDULED, IssueStatus.SENDING, IssueStatus.PAUSED,
    IssueStatus.FINISHED, IssueStatus.CANCELLED, IssueStatus.SKIPPED,
)


@dataclass(frozen=True)
class Transition:
    name: str
    sources: tuple[IssueStatus, ...]
    target: IssueStatus


SCHEDULE = Transition("schedule", (DRAFT, SCHEDULED), SCHEDULED)  # again: a new time
UNSCHEDULE = Transition("unschedule", (SCHEDULED,), DRAFT)
SKIP = Transition("skip", (DRAFT,), SKIPPED)
START = Transition("start", (DRAFT, SCHEDULED), SENDING)
PAUSE = Transition("pause", (SENDING,), PAUSED)
RESUME = Transition("resume", (PAUSED,), SENDING)
FINISH = Transition("finish", (SENDING,), FINISHED)
REOPEN = Transition("reopen", (FINISHED,), SENDING)
CANCEL = Transition("cancel", (DRAFT, SCHEDULED, SENDING, PAUSED), CANCELLED)

TRANSITIONS = (SCHEDULE, UNSCHEDULE, SKIP, START, PAUSE, RESUME, FINISH, REOPEN, CANCEL)

# The webhook event of each state an issue enters (states without one tell nobody).
EVENTS = {
    SENDING: "issue.sending", PAUSED: "issue.paused", FINISHED: "issue.finished",
    SKIPPED: "issue.skipped",
}

# An issue's text and items may change until its audience is frozen, i.e. while it could
# still be started.
EDITABLE = START.sources


def transition(
    session: Session | Connection,
    issue_id: int,
    change: Transition,
    *,
    when=None,
    **values,
) -> bool:
    """Make `change` to the issue, with `values` for the columns that change alongside.

    Raises NotFound or InvalidTransition when the issue is missing or in another state.
    With `when` (an extra SQL condition, e.g. "no delivery is left"), a change the
    condition holds back is no error: the result says whether it was made.
    """
    values.setdefault("updated_at", utcnow())
    condition = (Issue.id == issue_id) & Issue.status.in_(change.sources)
    if when is not None:
        condition &= when
    done = session.execute(
        update(Issue)
        .where(condition)
        .values(status=change.target, **values)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done and not isinstance(session, Connection):
        # The issue as this session loaded it is stale now: read it again when it is used.
        # (SQLAlchemy's own synchronization skips columns a just-inserted object never set.)
        loaded = session.identity_map.get(Session.identity_key(Issue, issue_id))
        if loaded is not None:
            session.expire(loaded, ["status", *values])
    if done and change.target in EVENTS:
        _emit(session, issue_id, change)
    if done or when is not None:
        return bool(done)
    if session.scalar(select(Issue.id).where(Issue.id == issue_id)) is None:
        raise NotFound(f"There is no issue {issue_id}.")
    raise InvalidTransition(f"Issue {issue_id}", change.sources, change.target)


def _emit(session: Session | Connection, issue_id: int, change: Transition) -> None:
    endpoint_ids = hooks.endpoints_for(session, EVENTS[change.target])
    if not endpoint_ids:
        return
    row = session.execute(
        select(Issue.id, Issue.subject, Issue.status_reason, Issue.schedule_id, Newsletter.slug)
        .outerjoin(Newsletter, Newsletter.id == Issue.newsletter_id)
        .where(Issue.id == issue_id)
    ).one()
    data = {"issue": {"id": row.id, "subject": row.subject, "status": str(change.target),
                      "schedule_id": row.schedule_id, "newsletter": row.slug},
            "change": change.name}
    if change.target in (PAUSED, SKIPPED):
        data["reason"] = row.status_reason
    hooks.emit(session, EVENTS[change.target], data, endpoint_ids=endpoint_ids)

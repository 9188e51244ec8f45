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
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailer.clock import utcnow
from mailer.errors import InvalidTransition, NotFound
from mailer.models import Issue, IssueStatus

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
        update(Issue).where(condition).values(status=change.target, **values)
    ).rowcount
    if done or when is not None:
        return bool(done)
    if session.scalar(select(Issue.id).where(Issue.id == issue_id)) is None:
        raise NotFound(f"There is no issue {issue_id}.")
    raise InvalidTransition(f"Issue {issue_id}", change.sources, change.target)

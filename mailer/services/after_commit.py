"""Work for the workers, handed over once the transaction that made it visible commits.

A service often decides that a worker must do something next: send the batches it just
claimed, mail the reader who just signed up. It may not talk to Celery (services know no
tasks), and it must not hand anything over before its rows are committed: a task that
starts too early finds nothing, and a transaction that rolls back must start nothing. So
the service records an intent on its session, naming the task:

    after_commit.enqueue(session, "mailer.send_batch", issue_id, ids, token, chain)

and the one listener the tasks layer installs (install(hand_over), see mailer.tasks.base)
hands the session's intents to the broker right after the commit. A rollback drops them;
a savepoint's rollback drops those recorded inside it. An intent the broker does not take
(it is down) is lost, so the work it stood for must be findable again: the tasks layer may
name what to do with a refused task (a batch's rows go back to pending, and the delivery
sweeper hands them out anew once the broker is back).

Some work is no worker's: it must simply follow the commit, in this process, at once (the
embedded mode and the CLI may run with no worker at all). The service records it as an
action, a function the listener calls right after the commit with a fresh, short session
of the same database (the committed one runs no more SQL):

    after_commit.run(session, looks.forget_logos, settings, [old_logo])

An action follows the same rules as an intent: a rollback drops it, a savepoint's rollback
drops those recorded inside it. The commit is done when it runs, so whatever it raises is
logged, never raised into the caller; what it did not commit itself is rolled back.

The other side is work that undoes what a transaction did outside the database, should the
transaction not commit (a logo file stored for a look the save then failed to keep):

    after_commit.on_rollback(session, looks.forget_logos, settings, [stored])

It is called the same way (a fresh session, errors logged) once the root transaction has
ended, if the work that recorded it did not commit: the root rolled back or ended without a
commit (a failed flush, a session closed), or the savepoint it was recorded in (or one
around it) rolled back. A savepoint's rollback does not call it at once: the transaction
around it goes on and may still use what it would undo, so it waits for the root's end,
commit or rollback, and must itself look at what is committed then (forget_logos keeps a
file a committed look shows). Recorded in work that commits, it is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

log = logging.getLogger(__name__)

_PENDING = "mailer.after_commit"  # session.info: [(transaction, Intent)]
_NOT_TAKEN = "mailer.after_commit.not_taken"  # session.info: intents the broker refused
_ACTIONS = "mailer.after_commit.actions"  # session.info: [(transaction, Action)]
_UNDO = "mailer.after_commit.undo"  # session.info: [(transaction, Action)], on_rollback's
_UNDONE = "mailer.after_commit.undone"  # session.info: [Action] whose savepoint rolled back


@dataclass(frozen=True)
class Intent:
    task: str  # the Celery task's name
    args: tuple
    options: dict = field(default_factory=dict)  # e.g. countdown


@dataclass(frozen=True)
class Action:
    call: Callable[..., object]  # called as call(fresh_session, *args)
    args: tuple


_hand_over: Callable[[Intent], bool] | None = None


def _session(session: Session | scoped_session) -> Session:
    return session() if isinstance(session, scoped_session) else session


def _record(session: Session | scoped_session, key: str, item: Intent | Action) -> None:
    _listen()
    session = _session(session)
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        session.connection()  # begins the transaction the intent belongs to
        transaction = session.get_transaction()
    session.info.setdefault(key, []).append((transaction, item))


def enqueue(session: Session, task: str, *args, countdown: float | None = None) -> None:
    """After this session's transaction commits, run `task` with `args` (ids, not objects)."""
    options = {"countdown": countdown} if countdown else {}
    _record(session, _PENDING, Intent(task, args, options))


def run(session: Session, call: Callable[..., object], *args) -> None:
    """After this session's transaction commits, call `call(fresh_session, *args)` here, in
    this process; never if it rolls back. Errors are logged, not raised (see above)."""
    _record(session, _ACTIONS, Action(call, args))


def on_rollback(session: Session, call: Callable[..., object], *args) -> None:
    """If the work of this session's transaction (or savepoint) does not commit, call
    `call(fresh_session, *args)` here once the root transaction has ended; never if it
    commits. Errors are logged, not raised (see above)."""
    _record(session, _UNDO, Action(call, args))


def take(session: Session) -> list[Intent]:
    """Remove the session's intents and return them: the caller runs them itself."""
    return [intent for _tx, intent in _session(session).info.pop(_PENDING, [])]


def not_taken(session: Session) -> int:
    """How many intents of the session's last commit the broker did not take."""
    return _session(session).info.get(_NOT_TAKEN, 0)


def install(hand_over: Callable[[Intent], bool]) -> None:
    """Hand intents to `hand_over` (True if the broker took it) after every commit."""
    global _hand_over
    _hand_over = hand_over
    _listen()


def _listen() -> None:
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_rollback)
        event.listen(Session, "after_transaction_end", _after_transaction_end)


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: nothing is committed until its root transaction is
    refused = 0
    for intent in take(session):
        try:
            taken = _hand_over(intent) if _hand_over else False
        except Exception:  # noqa: BLE001 - the commit is done; the work must be found again
            log.exception("could not hand %s%s to the workers", intent.task, intent.args)
            taken = False
        if not taken:
            if _hand_over is None:
                log.warning("no worker hand-over installed: %s%s dropped", intent.task, intent.args)
            refused += 1
    session.info[_NOT_TAKEN] = refused
    session.info.pop(_UNDO, None)  # their work is committed: nothing to undo
    actions = [action for _tx, action in session.info.pop(_ACTIONS, [])]
    if actions:
        _run(session, actions)


def _run(session: Session, actions: list[Action], what: str = "follows a commit") -> None:
    try:
        with Session(bind=session.get_bind()) as fresh:
            for action in actions:
                try:
                    action.call(fresh, *action.args)
                except Exception:  # noqa: BLE001 - the transaction is over: log, never raise
                    log.exception("the work that %s failed: %s%s", what,
                                  getattr(action.call, "__qualname__", action.call),
                                  action.args)
                fresh.rollback()  # what it did not commit itself; the next starts afresh
    except Exception:  # noqa: BLE001 - as above (no connection to be had, say)
        log.exception("could not run the work that %s", what)


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def _after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    # Called for a savepoint's rollback too (SQLAlchemy calls it for each), after the end
    # of the transaction it rolled back: a root's undo actions have run by then.
    for key in (_PENDING, _ACTIONS):
        pending = session.info.get(key)
        if pending:
            pending[:] = [(tx, i) for tx, i in pending if not _within(tx, previous_transaction)]
    undo = session.info.get(_UNDO)
    if undo:
        undone = [(tx, a) for tx, a in undo if _within(tx, previous_transaction)]
        if undone:
            undo[:] = [(tx, a) for tx, a in undo if not _within(tx, previous_transaction)]
            session.info.setdefault(_UNDONE, []).extend(a for _tx, a in undone)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # A root transaction that ended without a commit (closed, or rolled back by a failed
    # flush) hands over nothing; its intents and actions must not leak into the next one.
    # What on_rollback recorded and did not commit (all of it, unless _after_commit took
    # it; a rolled back savepoint's, either way) is undone now the outcome is final.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_ACTIONS, None)
        undo = [a for _tx, a in session.info.pop(_UNDO, [])]
        undo += session.info.pop(_UNDONE, [])
        if undo:
            _run(session, undo, "undoes a rolled back transaction")

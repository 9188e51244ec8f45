"""Work handed to the workers after the commit: never before it, never after a rollback."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from mailer.db import db
from mailer.models import Delivery, Issue
from mailer.services import after_commit, deliveries
from mailer.tasks.base import hand_over
from tests.helpers.delivery import add_readers, counts, make_renderer, new_issue


@pytest.fixture
def handed(app):
    """What the commits hand over, recorded instead of sent to the broker."""
    got: list[tuple[after_commit.Intent, int]] = []

    def record(intent: after_commit.Intent) -> bool:
        with db.transaction() as s:  # what another process sees at that moment
            issues = s.scalar(select(func.count()).select_from(Issue))
        got.append((intent, issues))
        return not intent.task.endswith("refused")

    after_commit.install(record)
    with app.app_context():
        yield got
    after_commit.install(hand_over)


def test_intents_are_handed_over_once_the_commit_made_their_rows_visible(handed):
    with db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        s.flush()
        after_commit.enqueue(s, "mailer.first", 1, [2, 3])
        after_commit.enqueue(s, "mailer.second", "x", countdown=5)
        assert handed == []
    assert handed == [
        (after_commit.Intent("mailer.first", (1, [2, 3])), 1),
        (after_commit.Intent("mailer.second", ("x",), {"countdown": 5}), 1),
    ]
    assert after_commit.not_taken(s) == 0


def test_a_rollback_hands_over_nothing(handed):
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        s.flush()
        after_commit.enqueue(s, "mailer.first", 1)
        raise RuntimeError("the request failed")
    session = db.session
    after_commit.enqueue(session, "mailer.second", 2)
    session.rollback()
    session.add(Issue(subject="Two", status="draft"))
    session.commit()  # a later commit of the same session carries nothing of the rolled back
    assert handed == []


def test_a_rolled_back_savepoint_drops_only_its_own_intents(handed):
    with db.transaction() as s:
        after_commit.enqueue(s, "mailer.before", 1)
        with pytest.raises(RuntimeError), s.begin_nested():
            after_commit.enqueue(s, "mailer.inside", 2)
            raise RuntimeError("a duplicate insert")
        with s.begin_nested():
            after_commit.enqueue(s, "mailer.kept", 3)
        after_commit.enqueue(s, "mailer.after", 4)
    assert [i.task for i, _ in handed] == ["mailer.before", "mailer.kept", "mailer.after"]


def test_a_released_savepoint_hands_over_nothing_before_the_commit(handed):
    """SQLAlchemy calls after_commit when a savepoint is released too: nothing of the
    transaction is visible to a worker then, and the transaction may still roll back."""
    with pytest.raises(RuntimeError), db.transaction() as s:
        after_commit.enqueue(s, "mailer.before", 1)
        with s.begin_nested():
            after_commit.enqueue(s, "mailer.inside", 2)
        assert handed == []
        raise RuntimeError("the request failed after its savepoint")
    assert handed == []
    with db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        after_commit.enqueue(s, "mailer.before", 1)
        with s.begin_nested():
            s.flush()
            after_commit.enqueue(s, "mailer.inside", 2)
        assert handed == []
    assert [(i.task, issues) for i, issues in handed] == [("mailer.before", 1),
                                                          ("mailer.inside", 1)]


def test_a_session_closed_without_commit_hands_over_nothing(handed):
    session = db.session_factory()
    after_commit.enqueue(session, "mailer.first", 1)
    session.close()
    session.add(Issue(subject="One", status="draft"))
    session.commit()
    assert handed == []


def test_intents_run_by_the_caller_are_not_handed_over(handed):
    with db.transaction() as s:
        after_commit.enqueue(s, "mailer.first", 1)
        assert after_commit.take(s) == [after_commit.Intent("mailer.first", (1,))]
    assert handed == []


def test_what_the_broker_refuses_is_counted_and_the_commit_stands(handed, caplog):
    with db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        after_commit.enqueue(s, "mailer.refused", 1)
        after_commit.enqueue(s, "mailer.taken", 2)
        after_commit.enqueue(s, "no.such.task.refused", 3)
    assert after_commit.not_taken(s) == 2 and len(handed) == 3

    def broken(intent):
        raise KeyError(intent.task)

    after_commit.install(broken)
    with caplog.at_level(logging.ERROR), db.transaction() as s:
        s.add(Issue(subject="Two", status="draft"))
        after_commit.enqueue(s, "mailer.first", 1)
    assert after_commit.not_taken(s) == 1 and "could not hand mailer.first" in caplog.text
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 2


@pytest.mark.redis
def test_batches_the_broker_did_not_take_go_back_to_pending_for_the_sweeper(env, tmp_path):
    from tests.helpers.app import make_app
    from tests.helpers.servers import free_port

    dead = make_app(env, MAILER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    settings = dead.extensions["mailer.settings"]
    add_readers(30)
    with dead.app_context():
        issue_id = new_issue()
        with db.transaction() as s:
            started = deliveries.start_send(s, issue_id, settings=settings, render=make_renderer())
        assert len(started.batches) == 1 and after_commit.not_taken(s) == 1
        # Refused by the broker: given back at once, not held for a task nobody has.
        assert counts(issue_id)["pending"] == 30
        with db.transaction() as s:
            swept = deliveries.sweep(s, settings)  # no need to wait for the lease
            (intent,) = after_commit.take(s)
            every_row = s.scalars(select(Delivery.id).where(Delivery.issue_id == issue_id))
            assert sorted(intent.args[1]) == sorted(every_row)
    assert swept.requeued == 0 and intent.task == deliveries.SEND_BATCH


# --- actions: work that follows the commit in this process ---------------------------------


def _issues_seen(ran: list):
    def action(session, label):
        ran.append((label, session.scalar(select(func.count()).select_from(Issue))))
    return action


def test_an_action_runs_after_the_commit_with_a_session_that_sees_its_rows(app):
    ran: list = []
    with db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        s.flush()
        after_commit.run(s, _issues_seen(ran), "first")
        with s.begin_nested():  # a savepoint released is no commit
            after_commit.run(s, _issues_seen(ran), "inside")
        assert ran == []
    assert ran == [("first", 1), ("inside", 1)]
    with db.transaction() as s:  # a later commit of the same session runs nothing again
        s.add(Issue(subject="Two", status="draft"))
    assert len(ran) == 2


def test_a_rollback_runs_no_action_and_a_savepoint_rollback_only_its_own(app):
    ran: list = []
    with pytest.raises(RuntimeError), db.transaction() as s:
        after_commit.run(s, _issues_seen(ran), "rolled back")
        raise RuntimeError("the request failed")
    session = db.session
    after_commit.run(session, _issues_seen(ran), "rolled back too")
    session.rollback()
    with db.transaction() as s:
        after_commit.run(s, _issues_seen(ran), "before")
        with pytest.raises(RuntimeError), s.begin_nested():
            after_commit.run(s, _issues_seen(ran), "inside")
            raise RuntimeError("a duplicate insert")
        after_commit.run(s, _issues_seen(ran), "after")
    session.add(Issue(subject="One", status="draft"))
    session.commit()
    assert ran == [("before", 0), ("after", 0)]


def test_an_action_that_fails_is_logged_and_neither_the_commit_nor_the_others_fail(
        app, caplog):
    ran: list = []

    def broken(session):
        session.execute(select(func.count()).select_from(Issue))
        raise OSError("disk gone")

    with caplog.at_level(logging.ERROR, logger="mailer.services.after_commit"), \
            db.transaction() as s:
        s.add(Issue(subject="One", status="draft"))
        after_commit.run(s, broken)
        after_commit.run(s, _issues_seen(ran), "next")
    assert ran == [("next", 1)]
    assert "the work that follows a commit failed" in caplog.text and "disk gone" in caplog.text
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 1


# --- on_rollback: work that undoes what a transaction did outside the database ------------


def test_an_undo_runs_after_a_rollback_or_a_close_and_never_after_a_commit(app):
    ran: list = []
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.add(Issue(subject="Rolled back", status="draft"))
        s.flush()
        after_commit.on_rollback(s, _issues_seen(ran), "rolled back")
        assert ran == []
        raise RuntimeError("the request failed")
    assert ran == [("rolled back", 0)]  # after the rollback: its row is gone

    session = db.session_factory()
    session.add(Issue(subject="Never committed", status="draft"))
    session.flush()
    after_commit.on_rollback(session, _issues_seen(ran), "closed")
    session.close()
    assert ran[-1] == ("closed", 0)

    session = db.session
    session.add(Issue(subject="Kept", status="draft"))
    after_commit.on_rollback(session, _issues_seen(ran), "committed")
    session.commit()
    session.add(Issue(subject="Later", status="draft"))
    session.commit()  # later transactions of the same session undo nothing of it
    session.add(Issue(subject="Later, rolled back", status="draft"))
    session.rollback()
    assert [label for label, _ in ran] == ["rolled back", "closed"]


def test_an_undo_recorded_in_a_rolled_back_savepoint_waits_for_the_root_to_end(app):
    """The savepoint's work is undone, but the transaction around it goes on and may still
    use what the undo would take away: the undo runs once the root has ended, and sees what
    was committed."""
    ran: list = []
    with db.transaction() as s:
        with pytest.raises(RuntimeError), s.begin_nested():
            after_commit.on_rollback(s, _issues_seen(ran), "savepoint rolled back")
            raise RuntimeError("a duplicate insert")
        with s.begin_nested():
            after_commit.on_rollback(s, _issues_seen(ran), "savepoint released")
        s.add(Issue(subject="The outer work", status="draft"))
        s.flush()
        assert ran == []
    assert ran == [("savepoint rolled back", 1)]

    ran.clear()
    with pytest.raises(RuntimeError), db.transaction() as s:
        with s.begin_nested():
            after_commit.on_rollback(s, _issues_seen(ran), "released, then the root failed")
        raise RuntimeError("the request failed after its savepoint")
    assert ran == [("released, then the root failed", 1)]


def test_an_undo_that_fails_is_logged_and_the_others_still_run(app, caplog):
    ran: list = []

    def broken(session):
        raise OSError("disk gone")

    with caplog.at_level(logging.ERROR, logger="mailer.services.after_commit"), \
            pytest.raises(RuntimeError), db.transaction() as s:
        after_commit.on_rollback(s, broken)
        after_commit.on_rollback(s, _issues_seen(ran), "next")
        raise RuntimeError("the request failed")
    assert ran == [("next", 0)]
    assert "undoes a rolled back transaction failed" in caplog.text
    assert "disk gone" in caplog.text

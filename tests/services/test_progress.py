"""An issue's progress as pages and API clients poll it: one count serves many polls."""

from __future__ import annotations

import pytest
from sqlalchemy import event, update

from mailer.db import db
from mailer.models import Delivery, DeliveryStatus
from mailer.services import after_commit, deliveries, progress
from tests.helpers.delivery import add_readers, make_renderer, new_issue
from tests.helpers.servers import free_port


@pytest.fixture
def sending(rt):
    """An issue being sent to 30 readers, its batches held back (none is sent)."""
    add_readers(30)
    issue_id = new_issue()
    with db.transaction() as s:
        deliveries.start_send(s, issue_id, settings=rt.settings, render=make_renderer())
        after_commit.take(s)  # no broker here: the batches are not handed out
    return issue_id


@pytest.fixture
def counted():
    """How many times the deliveries were counted per state (the costly statement)."""
    seen = []

    def count(_conn, _cursor, statement, *_):
        if "GROUP BY" in statement and "FROM deliveries" in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    yield seen
    event.remove(db.engine, "before_cursor_execute", count)


@pytest.fixture(autouse=True)
def forget():
    progress._local.clear()
    progress._shared._down_until.clear()  # no back-off left by an earlier test
    yield
    progress._local.clear()


def mark_one_sent(issue_id: int) -> None:
    with db.transaction() as s:
        one = s.scalar(Delivery.__table__.select().with_only_columns(Delivery.id)
                       .where(Delivery.issue_id == issue_id).limit(1))
        s.execute(update(Delivery).where(Delivery.id == one).values(status=DeliveryStatus.SENT))


def watched(issue_id: int, redis_url=None) -> dict:
    with db.transaction() as s:
        return progress.watched_status(s, issue_id, redis_url)


def test_a_recent_count_serves_the_next_polls_until_it_is_stale(sending, counted, monkeypatch):
    monkeypatch.setattr(progress, "STALE_FACTOR", 1e9)  # never stale
    first = watched(sending)
    assert first["status"] == "sending"
    assert first["total"] == 30 and first["counts"]["sent"] == 0
    mark_one_sent(sending)
    again = watched(sending)
    assert len(counted) == 1, "the second poll counted again"
    assert again["counts"] == first["counts"]  # the earlier count, as it was

    monkeypatch.setattr(progress, "STALE_FACTOR", 0.0)  # stale at once
    fresh = watched(sending)
    assert len(counted) == 2
    assert fresh["counts"]["sent"] == 1 and fresh["done"] == 1
    assert fresh == deliveries.status(db.session, sending)


def test_the_issue_state_is_read_afresh_and_other_states_are_always_counted(
    sending, counted, monkeypatch
):
    monkeypatch.setattr(progress, "STALE_FACTOR", 1e9)
    watched(sending)
    with db.transaction() as s:
        deliveries.pause(s, sending)
    paused = watched(sending)
    assert paused["status"] == "paused"
    watched(sending)
    assert len(counted) == 3, "an issue not sending is counted on every poll"


@pytest.mark.redis
def test_with_redis_one_count_serves_every_web_process(rt, sending, counted, monkeypatch):
    monkeypatch.setattr(progress, "STALE_FACTOR", 1e9)
    first = watched(sending, rt.settings.redis_url)
    mark_one_sent(sending)
    progress._local.clear()  # another process: nothing counted there yet
    assert watched(sending, rt.settings.redis_url) == first
    assert len(counted) == 1


def test_an_unreachable_redis_costs_a_count_never_an_error(sending, counted, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert watched(sending, dead)["total"] == 30
    assert "without Redis" in caplog.text
    assert len(counted) == 1

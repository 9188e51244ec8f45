"""The retention of the outgoing webhooks' history: finished deliveries older than
MAILER_WEBHOOK_KEEP_DAYS go with their events, in bounded batches, by the housekeeping tick;
younger and unfinished ones stay, the attempt counters of /metrics never go down, and 0 keeps
everything."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from mailer.clock import utcnow
from mailer.db import db
from mailer.models import HookDelivery, HookEvent, HookStatus
from mailer.services import after_commit, hook_endpoints, hooks
from mailer.tasks import hooks as hook_tasks
from mailer.tasks.base import hand_over, run_tick
from tests.helpers.app import make_app

DAY = timedelta(days=1)


@pytest.fixture
def quiet(app):
    """The app, with the delivery tasks the commits hand over dropped: the attempts here
    are made by the test, at the times it chooses."""
    after_commit.install(lambda intent: True)
    with app.app_context():
        yield app
    after_commit.install(hand_over)


def endpoint() -> int:
    with db.transaction() as s:
        return hook_endpoints.create(s, url="http://127.0.0.1:9/hooks", events="*",
                                     allow_http=True, allow_private=True).id


def event(endpoint_ids: list[int], at) -> tuple[int, list[int]]:
    """An event emitted at `at` with one delivery per endpoint: (event id, delivery ids)."""
    with db.transaction() as s:
        event_id = hooks.emit(s, "subscriber.created", {"subscriber": {"id": 1}}, now=at,
                              endpoint_ids=endpoint_ids)
        ids = list(s.scalars(select(HookDelivery.id).where(HookDelivery.event_id == event_id)
                             .order_by(HookDelivery.endpoint_id)))
    return event_id, ids


def attempt(delivery_id: int, at, *, ok: bool, retries=()) -> HookStatus:
    """One real attempt's claim and record at `at` (ok: delivered; not ok and no retries
    left: failed for good; else pending again)."""
    with db.transaction() as s:
        claimed = hooks.claim(s, delivery_id, now=at)
        assert claimed is not None
    with db.transaction() as s:
        recorded = hooks.record(s, claimed, ok=ok, status_code=200 if ok else 500,
                                latency_ms=5, excerpt="", retries=retries,
                                disable_after=timedelta(days=365), now=at)
    return recorded.status


def claim_only(delivery_id: int, at) -> None:
    with db.transaction() as s:
        assert hooks.claim(s, delivery_id, now=at) is not None


def rows() -> tuple[set[int], set[int]]:
    with db.transaction() as s:
        return (set(s.scalars(select(HookEvent.id))), set(s.scalars(select(HookDelivery.id))))


def attempt_lines(app) -> list[str]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return re.findall(r"^mailer_webhook_deliveries_total\{.*$", text, re.M)


def test_finished_history_older_than_the_window_goes_and_the_rest_stays(quiet):
    a, b = endpoint(), endpoint()
    old, young = utcnow() - 31 * DAY, utcnow() - 29 * DAY
    # Old and finished at every endpoint: delivered at one, failed for good at the other.
    gone_event, (gone_ok, gone_failed) = event([a, b], old)
    assert attempt(gone_ok, old, ok=True) == HookStatus.DELIVERED
    assert attempt(gone_failed, old, ok=False) == HookStatus.FAILED
    # Finished, but in the window.
    young_event, (young_ok,) = event([a], young)
    attempt(young_ok, young, ok=True)
    # Old, and still retrying or being attempted right now: never pruned.
    retrying_event, (retrying,) = event([a], old)
    assert attempt(retrying, old, ok=False, retries=(3600.0,)) == HookStatus.PENDING
    sending_event, (sending,) = event([a], old)
    claim_only(sending, old)
    waiting_event, (waiting,) = event([b], old)  # never attempted
    # Old, delivered at one endpoint and still owed to the other: the finished delivery
    # goes, the event stays for the one that waits.
    half_event, (half_done, half_owed) = event([a, b], old)
    attempt(half_done, old, ok=True)
    # Made long ago, but redelivered by an operator just now: kept from its last attempt.
    again_event, (again,) = event([a], old)
    attempt(again, old, ok=True)
    with db.transaction() as s:
        hook_endpoints.redeliver(s, again)
    attempt(again, utcnow(), ok=True)
    counted = attempt_lines(quiet)
    assert len(counted) == 3 and 'result="delivered"} 5' in counted[0]

    assert hook_tasks.prune_webhook_history() == {"deliveries": 3, "events": 1}

    events, deliveries = rows()
    assert events == {young_event, retrying_event, sending_event, waiting_event, half_event,
                      again_event}
    assert deliveries == {young_ok, retrying, sending, waiting, half_owed, again}
    assert attempt_lines(quiet) == counted  # the totals do not go down
    with db.transaction() as s:
        assert hooks.attempt_counts(s) == {"delivered": 5, "failed": 2, "refused": 0}
    # Nothing more to do on the next tick.
    assert hook_tasks.prune_webhook_history() == {"deliveries": 0, "events": 0}

    # Once the owed delivery is made and as old, the event goes too.
    attempt(half_owed, old + timedelta(minutes=1), ok=True)
    assert hook_tasks.prune_webhook_history() == {"deliveries": 1, "events": 1}
    assert half_event not in rows()[0]


def test_an_event_left_without_deliveries_goes_once_it_is_old(quiet):
    """Removing an endpoint takes its deliveries (the event stays for the others); an event
    it was the only endpoint of is deleted once it is as old as the window."""
    a, b = endpoint(), endpoint()
    orphan, _ = event([a], utcnow() - 40 * DAY)
    recent_orphan, _ = event([a], utcnow() - DAY)
    kept, _ = event([b], utcnow() - 40 * DAY)
    with db.transaction() as s:
        hook_endpoints.remove(s, a)
    assert hook_tasks.prune_webhook_history() == {"deliveries": 0, "events": 1}
    assert rows()[0] == {recent_orphan, kept}


def test_a_backlog_goes_in_bounded_batches(quiet, monkeypatch):
    a = endpoint()
    old = utcnow() - 100 * DAY
    for _ in range(7):
        _, (d,) = event([a], old)
        attempt(d, old, ok=True)
    # The service deletes at most `limit` of each per call (one transaction each).
    with db.transaction() as s:
        assert hooks.prune(s, 30 * DAY, limit=3) == {"deliveries": 3, "events": 3}
    # The tick's step makes at most PRUNE_BATCHES of PRUNE_BATCH rows per tick...
    monkeypatch.setattr(hook_tasks, "PRUNE_BATCH", 1)
    monkeypatch.setattr(hook_tasks, "PRUNE_BATCHES", 2)
    assert hook_tasks.prune_webhook_history() == {"deliveries": 2, "events": 2}
    assert len(rows()[1]) == 2
    # ...and goes on at the next tick; it stops as soon as a batch is not full.
    monkeypatch.setattr(hook_tasks, "PRUNE_BATCH", 5)
    assert hook_tasks.prune_webhook_history() == {"deliveries": 2, "events": 2}
    assert rows() == (set(), set())


def test_each_batch_is_its_own_transaction(quiet, monkeypatch):
    """A failure in a later batch leaves the earlier batches' deletions committed."""
    a = endpoint()
    old = utcnow() - 100 * DAY
    for _ in range(3):
        _, (d,) = event([a], old)
        attempt(d, old, ok=True)
    real, calls = hooks.prune, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(hook_tasks, "PRUNE_BATCH", 1)
    monkeypatch.setattr(hook_tasks.hooks, "prune", second_fails)
    with pytest.raises(RuntimeError):
        hook_tasks.prune_webhook_history()
    events, deliveries = rows()
    assert len(events) == 2 and len(deliveries) == 2


def test_the_tick_prunes(quiet):
    a = endpoint()
    old = utcnow() - 31 * DAY
    _, (d,) = event([a], old)
    attempt(d, old, ok=True)
    done = run_tick()
    assert done["prune_webhook_history"] == {"deliveries": 1, "events": 1}
    assert rows() == (set(), set())


def test_zero_keeps_everything(quiet, env):
    a = endpoint()
    ancient = utcnow() - 3650 * DAY
    _, (d,) = event([a], ancient)
    attempt(d, ancient, ok=True)
    forever = make_app(env, MAILER_WEBHOOK_KEEP_DAYS="0")
    with forever.app_context():
        assert hook_tasks.prune_webhook_history() is None
        assert len(rows()[1]) == 1
    # The same history under the default window goes.
    assert hook_tasks.prune_webhook_history() == {"deliveries": 1, "events": 1}


def test_the_window_is_a_setting(quiet, env):
    a = endpoint()
    at = utcnow() - 10 * DAY
    _, (d,) = event([a], at)
    attempt(d, at, ok=True)
    assert hook_tasks.prune_webhook_history() == {"deliveries": 0, "events": 0}
    with make_app(env, MAILER_WEBHOOK_KEEP_DAYS="7").app_context():
        assert hook_tasks.prune_webhook_history() == {"deliveries": 1, "events": 1}

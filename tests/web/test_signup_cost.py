"""What one signup costs on the production stack: one database round trip (its one statement,
in autocommit mode: no BEGIN, no COMMIT) between two Redis round trips (the limits before it,
the confirmation's hand-off after it)."""

from __future__ import annotations

import pytest
from sqlalchemy import event, func, select

from mailer.db import db
from mailer.models import ConsentRecord, Subscriber, SubscriberEvent
from mailer.tasks import notices
from tests.helpers.app import make_app
from tests.helpers.delivery import own_broker

pytestmark = pytest.mark.redis


@pytest.fixture
def counted(app, monkeypatch):
    """Counts what reaches the database's driver (statements, and the BEGIN, COMMIT and
    ROLLBACK psycopg sends by itself), pings, and commands sent to Redis."""
    import redis.connection
    from psycopg._connection_base import BaseConnection
    from sqlalchemy.engine import Connection

    seen = {"statements": 0, "begins": 0, "commits": 0, "rollbacks": 0, "pings": 0,
            "redis": 0, "through_core": 0}
    engine = db.engine

    def statement(*_a, **_k):
        seen["statements"] += 1

    event.listen(engine, "before_cursor_execute", statement)
    commands = {b"BEGIN": "begins", b"COMMIT": "commits", b"ROLLBACK": "rollbacks"}
    exec_command = BaseConnection._exec_command

    def command(self, sql, *a, **k):
        name = commands.get(bytes(sql).split(b" ", 1)[0] if isinstance(sql, bytes) else b"")
        if name:
            seen[name] += 1
        return exec_command(self, sql, *a, **k)

    monkeypatch.setattr(BaseConnection, "_exec_command", command)
    ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping",
                        lambda conn: (seen.__setitem__("pings", seen["pings"] + 1), ping(conn))[1])
    # The statement runs on the driver (db.DriverStatement), not through Core's execute.
    core = Connection._execute_clauseelement
    monkeypatch.setattr(Connection, "_execute_clauseelement",
                        lambda self, *a, **k: (seen.__setitem__("through_core",
                                                                seen["through_core"] + 1),
                                               core(self, *a, **k))[1])
    send = redis.connection.Connection.send_packed_command
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command",
                        lambda self, *a, **k: (seen.__setitem__("redis", seen["redis"] + 1),
                                               send(self, *a, **k))[1])
    yield seen
    event.remove(engine, "before_cursor_execute", statement)


def test_one_signup_is_one_database_round_trip_and_two_redis(app, env, tmp_path, counted,
                                                              make_email):
    import base64
    import json

    import redis

    # A broker database nobody consumes, to find the confirmation's message on it.
    quiet = own_broker(env, tmp_path)
    client = make_app(quiet).test_client()
    queue = redis.Redis.from_url(quiet["MAILER_REDIS_URL"])
    queue.delete("celery")
    assert client.post("/api/v1/subscribe", json={"email": make_email()}).status_code == 202
    counted.update(dict.fromkeys(counted, 0))  # warm: the script is loaded, the pool full
    email = make_email()
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    # The statement alone, a transaction of its own; the limits before it and the
    # confirmation's hand-off after it.
    assert counted == {"statements": 1, "begins": 0, "commits": 0, "rollbacks": 0, "pings": 0,
                       "redis": 2, "through_core": 0}
    sub = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
    assert sub.status == "pending" and sub.confirm_requested_at is not None
    for model in (ConsentRecord, SubscriberEvent):
        assert db.session.scalar(
            select(func.count()).select_from(model).where(model.subscriber_id == sub.id)
        ) == 1
    # The hand-off put the confirmation on the list of confirmations to mail, naming the
    # request it serves, and queued one task to drain that list: the second signup found it
    # queued (the worker's end is in tests/tasks/test_confirmations and test_faults).
    messages = [json.loads(m) for m in queue.lrange("celery", 0, -1)]
    entries = queue.lrange(notices.CONFIRMATIONS, 0, -1)
    queue.close()
    assert [m["headers"]["task"] for m in messages] == ["mailer.send_confirmations"]
    assert json.loads(base64.b64decode(messages[0]["body"]))[0] == []
    assert len(entries) == 2
    assert entries[0] == notices.confirmation_entry(sub.id, sub.confirm_requested_at)


def test_a_repeated_signup_within_the_cooldown_costs_the_same_and_queues_nothing(
    client, counted, make_email
):
    email = make_email()
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    counted.update(dict.fromkeys(counted, 0))
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    # No confirmation owed: no hand-off.
    assert counted == {"statements": 1, "begins": 0, "commits": 0, "rollbacks": 0, "pings": 0,
                       "redis": 1, "through_core": 0}
    sub_id = db.session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    assert db.session.scalar(
        select(func.count()).select_from(SubscriberEvent)
        .where(SubscriberEvent.subscriber_id == sub_id)
    ) == 1  # no "signup-repeated": the cooldown holds


def test_the_drain_message_is_built_once_per_process_each_copy_with_its_own_ids(
    app, env, tmp_path, make_email, monkeypatch
):
    import json

    import redis

    from mailer.tasks import base

    quiet = own_broker(env, tmp_path)
    client = make_app(quiet).test_client()
    queue = redis.Redis.from_url(quiet["MAILER_REDIS_URL"])
    built = []
    build = base.wire_message
    monkeypatch.setattr(base, "wire_message", lambda *a: built.append(a) or build(*a))
    monkeypatch.setattr(base, "_templates", {})
    messages = []
    for _ in range(3):
        queue.delete("celery", notices.DRAINING)  # no drain running: the script queues one
        assert client.post("/api/v1/subscribe", json={"email": make_email()}).status_code == 202
        messages += [json.loads(m) for m in queue.lrange("celery", 0, -1)]
    queue.close()
    assert len(built) == 1 and len(messages) == 3
    ids = [(m["headers"]["id"], m["properties"]["delivery_tag"]) for m in messages]
    assert len({i for pair in ids for i in pair}) == 6  # every id and tag new
    for m, (task_id, _) in zip(messages, ids, strict=True):
        assert m["headers"]["root_id"] == m["properties"]["correlation_id"] == task_id
        assert m["headers"]["task"] == "mailer.send_confirmations"
    # Apart from those, the copies are the message Celery builds.
    from mailer.tasks import send_confirmations

    _, fresh = build(send_confirmations)
    fresh = json.loads(fresh)
    for m in messages:
        for env_ in (m, fresh):
            env_["headers"].update(id=None, root_id=None)
            env_["properties"].update(correlation_id=None, delivery_tag=None)
        assert m == fresh


def test_a_drain_message_laid_out_otherwise_is_refused_not_copied_with_shared_ids(
    app, monkeypatch
):
    import json

    from mailer.tasks import base, send_confirmations

    key, data = base.wire_message(send_confirmations)
    task_id = json.loads(data)["headers"]["id"]
    # A Celery that also wrote the task id somewhere else: replacing it as text would
    # change that too, or leave a copy sharing it.
    envelope = json.loads(data)
    envelope["headers"]["parent_id"] = task_id
    monkeypatch.setattr(base, "wire_message", lambda task: (key, json.dumps(envelope)))
    monkeypatch.setattr(base, "_templates", {})
    with pytest.raises(RuntimeError, match="not laid out as expected"):
        base.fresh_wire_message(send_confirmations)


def test_the_confirmation_is_handed_off_once_its_signup_is_committed(app, client, make_email,
                                                                     monkeypatch):
    """A worker taking the entry at once finds the request committed: when the hand-off
    reaches Redis, another connection already sees the reader and the request."""
    from mailer.web.signup_gate import SignupGate

    seen = []
    hand_off = SignupGate.hand_off

    def look_then_hand_off(self, handoff):
        with db.engine.connect() as other:
            seen.append(other.scalar(
                select(Subscriber.confirm_requested_at.is_not(None))
                .where(Subscriber.email == email)))
        return hand_off(self, handoff)

    monkeypatch.setattr(SignupGate, "hand_off", look_then_hand_off)
    email = make_email()
    assert client.post("/api/v1/subscribe", json={"email": email}).status_code == 202
    assert seen == [True]


def test_a_signup_over_a_limit_writes_nothing_and_hands_off_nothing(app, env, tmp_path,
                                                                    make_email):
    import redis

    quiet = own_broker(env, tmp_path)
    limited = make_app(quiet, MAILER_SIGNUP_LIMIT_IP="2 per minute").test_client()
    queue = redis.Redis.from_url(quiet["MAILER_REDIS_URL"])
    queue.delete(notices.CONFIRMATIONS)
    emails = [make_email() for _ in range(3)]
    codes = [limited.post("/api/v1/subscribe", json={"email": e}).status_code for e in emails]
    assert codes == [202, 202, 429]
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 2
    assert db.session.scalar(select(Subscriber.id).where(Subscriber.email == emails[2])) is None
    assert queue.llen(notices.CONFIRMATIONS) == 2
    queue.close()

"""The one way to Redis: one client per process (a forked child builds its own), and Redis
that degrades when it fails, is left alone for the back-off, then tried again."""

from __future__ import annotations

import logging
import time

import pytest

from mailer import redis_client
from mailer.redis_client import Degrading
from tests.helpers.servers import RedisServer, free_port, in_forked_child

log = logging.getLogger("tests.redis_client")


@pytest.mark.redis
def test_one_client_per_process_and_a_new_one_in_a_forked_child(redis_server):
    url = redis_server.url
    parent = redis_client.client(url, timeout=0.5)
    assert redis_client.client(url, timeout=0.5) is parent
    assert redis_client.client(url, timeout=5) is not parent  # other timeouts, other client
    assert parent.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    assert parent.connection_pool.connection_kwargs["socket_connect_timeout"] == 0.5
    slow = redis_client.client(url, timeout=5, connect_timeout=3)
    assert slow is redis_client.client(url, timeout=5, connect_timeout=3)
    assert slow is not redis_client.client(url, timeout=5)
    assert slow.connection_pool.connection_kwargs["socket_timeout"] == 5
    assert slow.connection_pool.connection_kwargs["socket_connect_timeout"] == 3
    parent_connection = parent.client_id()

    def child():
        own = redis_client.client(url, timeout=0.5)
        return {"same object": own is parent,
                "again": own is redis_client.client(url, timeout=0.5),
                "connection": own.client_id()}

    found = in_forked_child(child)
    assert found["same object"] is False, "the child reused its parent's client"
    assert found["again"] is True, "the child's client is not reused in the child"
    assert found["connection"] != parent_connection
    # The parent's own connection is untouched by the child.
    assert parent.client_id() == parent_connection


def test_a_failure_degrades_once_and_redis_is_left_alone_for_the_back_off(caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    degrading = Degrading("test counts", timeout=0.5, log=log, backoff=60.0)
    tried = []

    def use(client):
        tried.append(client)
        return client.incr("counted")

    with caplog.at_level(logging.WARNING, logger=log.name):
        assert degrading.run(dead, use) is None
        assert degrading.run(dead, use) is None
        assert degrading.run(None, use) is None  # no Redis configured: never tried
    assert len(tried) == 1, "Redis was tried again within the back-off"
    warnings = [r for r in caplog.records if r.name == log.name]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("test counts without Redis for 60 s: ")


def test_down_tells_a_caller_its_answer_was_made_without_redis():
    dead = f"redis://127.0.0.1:{free_port()}/0"
    degrading = Degrading("test counts", timeout=0.5, log=log, backoff=60.0,
                          health_check_interval=30)
    tried = []

    def use(client):
        tried.append(client)
        return client.ping()

    assert not degrading.down(dead)
    assert degrading.run(dead, use) is None
    assert degrading.down(dead)
    assert not degrading.down(None) and not degrading.down("redis://127.0.0.1:1/0")
    # The client's own options (here: a health check on idle connections) reach it.
    assert tried[0].connection_pool.connection_kwargs["health_check_interval"] == 30


@pytest.mark.redis
def test_redis_is_tried_again_after_the_back_off(tmp_path, redis_server):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    degrading = Degrading("test counts", timeout=0.5, log=log, backoff=1.0)
    tried = []

    def use(client):
        tried.append(client)
        return client.incr("test-redis-client")

    assert degrading.run(url, use) is None  # down
    failed = time.monotonic()
    # A failure of one Redis leaves another one alone.
    other = redis_client.client(redis_server.url, timeout=0.5)
    try:
        assert degrading.run(redis_server.url, use) == 1
    finally:
        other.delete("test-redis-client")
    server = RedisServer(tmp_path, port=port).start()  # back up, at the same address
    try:
        time.sleep(max(0.0, failed + degrading.backoff - time.monotonic()) + 0.05)
        before = len(tried)
        assert degrading.run(url, use) == 1
        assert degrading.run(url, use) == 2
        assert len(tried) == before + 2
    finally:
        server.stop()


# --- Lua scripts ---------------------------------------------------------------------------

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.mark.redis
def test_a_script_is_made_once_per_client_and_source(redis_server):
    client = redis_client.client(redis_server.url, timeout=0.5)
    other = redis_client.client(redis_server.url, timeout=5)
    script = redis_client.script(client, COUNT)
    assert redis_client.script(client, COUNT) is script
    assert redis_client.script(client, "return 1") is not script
    elsewhere = redis_client.script(other, COUNT)
    assert elsewhere is not script and elsewhere.registered_client is other
    try:
        assert script(keys=["test-script-count"], args=[2]) == 2
        assert elsewhere(keys=["test-script-count"], args=[3]) == 5
    finally:
        client.delete("test-script-count")


def test_a_script_still_runs_after_redis_restarted_and_forgot_it(own_redis):
    client = redis_client.client(own_redis.url, timeout=2)
    script = redis_client.script(client, COUNT)
    try:
        assert script(keys=["counted"], args=[2]) == 2
        assert client.script_exists(script.sha) == [True]
        own_redis.restart()  # same port; its scripts and keys are gone (no persistence here)
        assert client.script_exists(script.sha) == [False]
        assert redis_client.script(client, COUNT) is script
        assert script(keys=["counted"], args=[3]) == 3  # loaded again, then run
        assert client.script_exists(script.sha) == [True]
    finally:
        client.close()


# --- Held connections ------------------------------------------------------------------------


@pytest.mark.redis
def test_held_connections_are_one_per_thread_and_kept(redis_server):
    import threading

    client = redis_client.client(redis_server.url, timeout=0.5)
    held = redis_client.held(client)
    assert redis_client.held(client) is held
    assert redis_client.held(redis_client.client(redis_server.url, timeout=5)) is not held
    try:
        mine = held.command("CLIENT", "ID")
        assert held.command("CLIENT", "ID") == mine  # the same connection, kept
        assert client.client_id() != mine  # not one of the client's pooled ones
        other = []
        thread = threading.Thread(target=lambda: other.append(held.command("CLIENT", "ID")))
        thread.start()
        thread.join()
        assert other and other[0] != mine
        script = redis_client.script(client, COUNT)
        assert held.script(script, ["test-held-count"], [2]) == 2
        assert held.script(script, ["test-held-count"], [3]) == 5
    finally:
        client.delete("test-held-count")
        held.close()


def test_a_held_connection_is_made_again_after_redis_restarted(own_redis):
    client = redis_client.client(own_redis.url, timeout=2)
    held = redis_client.held(client)
    script = redis_client.script(client, COUNT)
    try:
        assert held.script(script, ["counted"], [2]) == 2
        own_redis.restart()  # the held connection's socket is closed; the script forgotten
        assert held.script(script, ["counted"], [3]) == 3  # reconnected, loaded again, run
        assert client.script_exists(script.sha) == [True]
    finally:
        held.close()
        client.close()


def test_a_held_connection_to_a_dead_redis_raises_so_the_caller_degrades(caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    degrading = Degrading("test counts", timeout=0.5, log=log, backoff=60.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert degrading.run(dead, lambda c: redis_client.held(c).command("INCR", "n")) is None
    assert degrading.down(dead)

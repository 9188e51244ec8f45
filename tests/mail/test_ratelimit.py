"""The shared token bucket: one rate for every caller, smooth, surviving a Redis restart."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from mailer import redis_client
from mailer.mail.ratelimit import FileBucket, LimiterUnavailable, RedisBucket
from tests.helpers.servers import ROOT, RedisServer, in_forked_child


def hammer(bucket, threads: int, per_thread: int) -> list[float]:
    """Callers reserving chunks as fast as they may; when each chunk was allowed to go."""
    stamps: list[float] = []
    lock = threading.Lock()

    def caller():
        for _ in range(per_thread):
            n = bucket.chunk()
            bucket.acquire(n)
            with lock:
                stamps.extend([time.monotonic()] * n)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    [w.start() for w in workers]
    [w.join(30) for w in workers]
    return sorted(stamps)


def check_rate(stamps: list[float], rate: float) -> None:
    overall = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 0.9 * rate <= overall <= 1.1 * rate, overall
    # Smooth: no 100 ms window holds much more than its share.
    window = max(sum(1 for t in stamps if s <= t < s + 0.1) for s in stamps)
    assert window <= 0.1 * rate * 1.5 + bucket_burst(rate), window


def bucket_burst(rate: float) -> float:
    return max(1.0, rate * 0.05)


@pytest.mark.alone  # the rate is measured: other tests' load would slow the callers
def test_the_file_bucket_holds_one_rate_for_threads_and_processes(tmp_path):
    path = tmp_path / "bucket"
    bucket = FileBucket(path, rate=200)
    script = (
        "import sys, time; from mailer.mail.ratelimit import FileBucket\n"
        "b = FileBucket(sys.argv[1], rate=200)\n"
        "for _ in range(30):\n"
        "    b.acquire(b.chunk()); print(time.monotonic(), b.chunk(), flush=True)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    stamps = hammer(bucket, threads=2, per_thread=30)
    out, _ = other.communicate(timeout=30)
    for line in out.splitlines():
        t, n = line.split()
        stamps += [float(t)] * int(n)
    stamps.sort()
    assert len(stamps) == 3 * 30 * bucket.chunk()
    check_rate(stamps, 200)


@pytest.mark.redis
@pytest.mark.alone  # as above
def test_the_redis_bucket_is_shared_and_waits_out_a_restart(redis_server, tmp_path):
    a = RedisBucket(redis_server.url, rate=300, key="test:bucket")
    b = RedisBucket(redis_server.url, rate=300, key="test:bucket")
    # Two clients at once, as two worker processes would be.
    results: list[list[float]] = []
    threads = [
        threading.Thread(target=lambda bucket=bucket: results.append(hammer(bucket, 2, 20)))
        for bucket in (a, b)
    ]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    stamps = sorted(results[0] + results[1])
    check_rate(stamps, 300)

    own = RedisServer(tmp_path / "redis").start()
    c = gone = None
    try:
        c = RedisBucket(own.url, rate=1000, key="test:bucket", patience=10)
        c.acquire(1)
        restart = threading.Thread(target=own.restart, kwargs={"down_for": 1.0})
        restart.start()
        time.sleep(0.2)
        started = time.monotonic()
        c.acquire(1)  # waits for Redis rather than sending without a limit
        assert time.monotonic() - started >= 0.5
        restart.join(10)
        gone = RedisBucket(own.url, rate=1000, key="test:bucket", patience=0.5)
        own.stop()
        with pytest.raises(LimiterUnavailable, match="unreachable"):
            gone.acquire(1)
    finally:
        own.stop()
        for bucket in (c, gone):  # their server is gone: drop the connections they left
            if bucket is not None:
                bucket.client.close()


@pytest.mark.redis
def test_the_redis_bucket_uses_the_process_client_and_a_forked_child_its_own(redis_server):
    bucket = RedisBucket(redis_server.url, rate=1000, key="test:bucket:fork")
    bucket.acquire(1)
    parent = bucket.client
    # The process's client, with the bucket's timeouts: a reply within 5 s, a connection in 3.
    assert parent is redis_client.client(redis_server.url, timeout=5, connect_timeout=3)
    assert parent.connection_pool.connection_kwargs["socket_timeout"] == 5
    assert parent.connection_pool.connection_kwargs["socket_connect_timeout"] == 3
    parent_connection = parent.client_id()

    def child():  # the bucket its parent made, as a prefork worker gets it
        bucket.acquire(1)
        return {"same client": bucket.client is parent, "connection": bucket.client.client_id()}

    found = in_forked_child(child)
    assert found["same client"] is False, "the child reserved on its parent's client"
    assert found["connection"] != parent_connection
    assert parent.client_id() == parent_connection
    bucket.acquire(1)  # the parent's bucket goes on as before

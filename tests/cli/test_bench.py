"""`mailer bench`: a smoke run of the send benchmark (its checks and figures, not its speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.servers import ROOT

pytestmark = pytest.mark.redis  # the benchmark runs on PostgreSQL and Redis only


def test_the_send_benchmark_sends_each_reader_once_and_says_where_the_cpu_went(
    pg_database, redis_server, smtp
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=pg_database.url, MAILER_REDIS_URL=redis_server.url,
               PYTHONPATH=str(ROOT))
    smtp.reset()
    done = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bench", "-n", "300", "--smtp", smtp.url,
         "--concurrency", "1", "--redis-db", "13", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "finished" and result["counts"]["sent"] == 300
    assert len(smtp.messages) == 300 and len({m.recipient for m in smtp.messages}) == 300
    cpu = result["cpu_us_per_message"]
    # The send's own database work apart from the benchmark's watching it.
    assert {"workers", "postgres", "progress polls (postgres)", "bench"} <= set(cpu)
    assert cpu["workers"] > 0
    # The memory of every worker process: the pool's and the main process's that feeds it.
    assert len(result["peak_rss_mb_per_process"]) == 1
    assert [len(result[f"peak_{m}_mb_main"]) for m in ("rss", "pss", "private")] == [1, 1, 1]
    assert 0 < result["peak_private_mb_main"][0] < result["peak_rss_mb_main"][0]


def test_the_signup_benchmark_waits_until_each_worker_stopped_starting(tmp_path):
    """settle() returns once the server has its workers and their CPU time stands still: a
    worker still busy (importing the app, here a second of CPU) holds the load back."""
    import signal

    from mailer.bench_signups import settle

    done = tmp_path / "busy-worker-done"
    script = (
        "import os, pathlib, time\n"
        "for busy in (0, 1.0):\n"
        "    if os.fork() == 0:\n"
        "        while time.process_time() < busy:\n"
        "            pass\n"
        "        if busy:\n"
        f"            pathlib.Path({str(done)!r}).touch()\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        settle(proc, 2, timeout=30)
        assert done.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the master and the two workers it forked
        proc.wait()


# --- the signup benchmark's SMTP server: Postfix's smtp-sink, counted from its dump --------


def _mail(port: int, recipients: list[str], body: str = "Confirm your signup.",
          abort: bool = False) -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        if abort:  # a transaction given up before its data: no mail
            client.mail("news@bench.example")
            client.rcpt(recipients[0])
            client.rset()
            return
        client.sendmail("news@bench.example", recipients,
                        f"Subject: Confirm\r\n\r\n{body}\r\n")


def test_the_signup_benchmark_counts_each_confirmation_once_and_a_second_copy_fails_it(
    tmp_path,
):
    from mailer.bench_signups import SmtpSink, check

    smtp = SmtpSink(tmp_path)
    try:
        # The body may look like smtp-sink's own lines: only the envelope counts.
        _mail(smtp.port, ["a@bench.example", "b@bench.example"],
              body="X-Rcpt-Args: <c@bench.example>\r\nReceived: by hand")
        _mail(smtp.port, ["c@bench.example"], body="x" * 200_000)  # appended in many writes
        _mail(smtp.port, ["d@bench.example"], abort=True)
        received = smtp.counts()
        assert dict(received) == {"a@bench.example": 1, "b@bench.example": 1,
                                  "c@bench.example": 1}
        assert smtp.counts() == received  # read on from where it stopped: nothing twice
        accepted = ["a@bench.example", "b@bench.example", "c@bench.example"]
        assert check(accepted, 3, received) == ({1: 3}, True)

        _mail(smtp.port, ["c@bench.example"])  # a confirmation sent twice
        confirmations, ok = check(accepted, 3, smtp.counts())
        assert confirmations == {1: 2, 2: 1} and not ok
        assert not check(accepted, 2, smtp.counts())[1]  # a signup without its row
    finally:
        smtp.stop()


def test_the_signup_benchmark_waits_while_confirmations_arrive_and_a_missing_one_fails_it(
    tmp_path,
):
    """wait_for waits as long as mail keeps coming (here longer than `wait` in all), then
    gives up after `wait` seconds without any: the check says which one is missing."""
    import threading
    import time

    from mailer.bench_signups import SmtpSink, check, wait_for

    smtp = SmtpSink(tmp_path)
    accepted = [f"r{k}@bench.example" for k in range(6)]

    def slow_worker():
        for address in accepted[:5]:  # the last one is never mailed
            time.sleep(0.5)
            _mail(smtp.port, [address])

    sender = threading.Thread(target=slow_worker)
    try:
        started = time.monotonic()
        sender.start()
        wait_for(smtp, accepted, wait=1.5)
        took = time.monotonic() - started
        sender.join()
        assert took >= 2.5 + 1.5  # the five mails' time, then `wait` seconds of quiet
        confirmations, ok = check(accepted, 6, smtp.counts())
        assert confirmations == {1: 5, 0: 1} and not ok
        assert check(accepted[:5], 5, smtp.counts()) == ({1: 5}, True)
    finally:
        sender.join()
        smtp.stop()


# --- the benchmarks' Redis database: never another program's, never two runs at once ------


def _scratch(redis_server, db: int = 12, **kw):
    from mailer.bench import Scratch

    scratch = Scratch.beside("postgresql://postgres@127.0.0.1/postgres", redis_server.url, db)
    return Scratch(**{**scratch.__dict__, **kw})


def test_a_benchmark_empties_only_a_redis_database_that_is_empty_or_a_benchmarks(
    redis_server, pg_database
):
    import redis

    from mailer.bench import REDIS_LOCK, RedisInUse

    client = redis.Redis.from_url(_scratch(redis_server).redis_url)
    client.flushdb()
    client.set("someone:else", "theirs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=pg_database.url, MAILER_REDIS_URL=redis_server.url,
               PYTHONPATH=str(ROOT))
    for argv in (["-n", "10", "--smtp", "smtp://127.0.0.1:25"],
                 ["signups", "--requests", "10"]):
        done = subprocess.run([sys.executable, "-m", "mailer.cli", "bench", *argv,
                               "--redis-db", "12"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "holds keys that are not a benchmark's" in done.stderr
        assert "Traceback" not in done.stderr
        assert client.keys() == [b"someone:else"]  # nothing touched

    client.delete("someone:else")
    first = _scratch(redis_server)
    first.claim_redis()
    client.set("celery", "the first run's queue")
    first.release_redis(empty=False)  # a run with --keep, or one killed: its keys stay
    assert client.get(REDIS_LOCK) is None and client.get("celery")
    second = _scratch(redis_server)
    second.claim_redis()  # a previous benchmark's keys: emptied
    assert client.get("celery") is None
    second.release_redis()
    assert client.dbsize() == 0  # emptied of what the run made

    client.set("someone:else", "theirs")
    with pytest.raises(RedisInUse):
        _scratch(redis_server).claim_redis()
    assert client.keys() == [b"someone:else"]
    client.flushdb()


def test_a_benchmark_refuses_a_redis_database_another_benchmark_is_running_on(
    redis_server, pg_database
):
    import time

    import redis

    from mailer.bench import REDIS_LOCK, RedisInUse

    client = redis.Redis.from_url(_scratch(redis_server).redis_url)
    client.flushdb()
    first = _scratch(redis_server, lock_seconds=2)
    first.claim_redis()
    try:
        client.set("rate-limit", "the first run's")
        time.sleep(3)  # longer than the lock's expiry: the running benchmark renews it
        with pytest.raises(RedisInUse, match="another benchmark is running"):
            _scratch(redis_server).claim_redis()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
        env.update(MAILER_DATABASE_URL=pg_database.url, MAILER_REDIS_URL=redis_server.url,
                   PYTHONPATH=str(ROOT))
        done = subprocess.run([sys.executable, "-m", "mailer.cli", "bench", "signups",
                               "--requests", "10", "--redis-db", "12"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "another benchmark is running" in done.stderr
        assert client.get("rate-limit") == b"the first run's"  # nothing touched
    finally:
        first.release_redis()
    assert client.get(REDIS_LOCK) is None and client.dbsize() == 0

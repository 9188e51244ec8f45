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

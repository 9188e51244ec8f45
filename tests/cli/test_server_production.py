"""The production processes as ops run them: `mailer web` (gunicorn) and `mailer beat`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.servers import children, free_port, start_mailer, stop_mailer, wait_until

pytestmark = pytest.mark.redis


def test_web_under_gunicorn_takes_signups_the_worker_confirms(
    app, env, smtp, worker, make_email, tmp_path
):
    port = free_port()
    proc, log = start_mailer(["web", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                      env, tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "web.log").read_text()
            try:
                return httpx.get(f"{base}/healthz", timeout=2).json()
            except httpx.HTTPError:
                return None

        assert wait_until(up, 60, 0.2, what="gunicorn") == {
            "status": "ok", "database": "ok", "broker": "ok"
        }
        email = make_email()
        resp = httpx.post(f"{base}/api/v1/subscribe", json={"email": email}, timeout=10)
        assert resp.status_code == 202
        (mail,) = smtp.wait_for(email, match="/confirm/")
        assert mail.message["To"] == email
    finally:
        stop_mailer(proc, log)
    assert "Booting worker" in (tmp_path / "web.log").read_text()


def test_beat_drives_the_periodic_tick_on_the_worker(app, env, worker, tmp_path):
    before = worker.log_path.read_text(errors="replace").count("mailer.tick")
    proc, log = start_mailer(["beat", "--loglevel", "INFO"],
                      {**env, "MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_TICK_SECONDS": "1"}, tmp_path / "beat.log")
    try:
        wait_until(
            lambda: worker.log_path.read_text(errors="replace").count("mailer.tick") > before,
            60, 0.2, what="the worker to run a tick sent by beat",
        )
    finally:
        stop_mailer(proc, log)
    assert "Sending due task tick (mailer.tick)" in (tmp_path / "beat.log").read_text()
    assert proc.returncode == 0  # stopped by one SIGTERM, not killed by a second


def _ticking_beat(env, tmp_path):
    """`mailer beat` ticking every second: (supervisor, its log file, the log's path, the
    scheduler process under it)."""
    log_path = tmp_path / "beat.log"
    proc, log = start_mailer(["beat", "--loglevel", "INFO"],
                             {**env, "MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_TICK_SECONDS": "1"},
                             log_path)
    try:
        wait_until(lambda: "Sending due task tick" in log_path.read_text(errors="replace"),
                   60, 0.1, what="beat to tick")
        (scheduler,) = children(proc.pid)[:1]
    except BaseException:
        stop_mailer(proc, log)
        raise
    return proc, log, log_path, scheduler


def test_beat_that_does_not_stop_is_killed_by_its_supervisor(app, env, tmp_path):
    """A scheduler stuck in its shutdown (here: stopped outright) holds the parent forever
    unless the parent bounds the wait: once the grace is over it asks for the stacks and
    kills it, and `mailer beat` exits."""
    from mailer.supervise import SCHEDULER_STOP_GRACE

    proc, log, log_path, scheduler = _ticking_beat(env, tmp_path)
    try:
        os.kill(scheduler, signal.SIGSTOP)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(SCHEDULER_STOP_GRACE + 8)
        took = time.monotonic() - started
    finally:
        stop_mailer(proc, log)
    text = log_path.read_text(errors="replace")
    assert "the scheduler is still running 10 s after it was asked to stop" in text, text[-3000:]
    assert code == 128 + signal.SIGKILL
    assert SCHEDULER_STOP_GRACE <= took < SCHEDULER_STOP_GRACE + 8


def test_beat_writes_its_stacks_on_sigusr1_and_goes_on(app, env, tmp_path):
    proc, log, log_path, scheduler = _ticking_beat(env, tmp_path)
    try:
        os.kill(scheduler, signal.SIGUSR1)
        wait_until(lambda: "(most recent call first)" in log_path.read_text(errors="replace"),
                   10, 0.1, what="the stacks in the log")
        ticks = log_path.read_text(errors="replace").count("Sending due task tick")
        wait_until(lambda: log_path.read_text(errors="replace").count("Sending due task tick")
                   > ticks, 20, 0.2, what="beat ticking on")
    finally:
        stop_mailer(proc, log)
    assert proc.returncode == 0
    assert "in start" in log_path.read_text(errors="replace")  # Service.start's frame


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as gone)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@pytest.mark.parametrize("pool", ["threads", "prefork", "solo"])
def test_nothing_a_worker_started_outlives_it_when_its_supervisor_is_killed(
    app, env, tmp_path, pool
):
    """`mailer worker --beat` (as `mailer run` starts it): the Celery process runs in a
    group of its own, so a SIGKILL to the supervisor's group reaches only the supervisor;
    the Celery process dies with it, and what Celery forked (the embedded scheduler, the
    pool's processes) dies with that in turn instead of living on as orphans."""
    proc, log = start_mailer(
        ["worker", "--beat", "--pool", pool, "--concurrency", "2", "--loglevel", "INFO"],
        {**env, "MAILER_INSTANCE_PATH": str(tmp_path)}, tmp_path / "worker.log",
    )
    try:
        # Celery and the scheduler (and two pool processes); a solo worker that could not
        # start would come and go under its supervisor, never with a scheduler below it.
        wanted = 4 if pool == "prefork" else 2
        wait_until(lambda: len(children(proc.pid)) >= wanted, 60, 0.1,
                   what="the worker, its scheduler and its pool")
        below = children(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

        wait_until(lambda: all(_gone(pid) for pid in below), 10, 0.05,
                   what=f"every process below the supervisor to die ({below})")
    finally:
        stop_mailer(proc, log)


def test_beat_runs_in_its_own_group_and_dies_with_its_supervisor(app, env, tmp_path):
    """A group kill reaches the scheduler once, passed on by its parent (a second SIGTERM
    can land while it exits, and kill it with 143); a SIGKILL to the parent alone, which
    nothing passes on, still ends it."""
    log_path = tmp_path / "beat.log"
    proc, log = start_mailer(["beat", "--loglevel", "INFO"],
                             {**env, "MAILER_INSTANCE_PATH": str(tmp_path)}, log_path)
    try:
        wait_until(lambda: children(proc.pid), 30, 0.05, what="the scheduler process")
        (scheduler,) = children(proc.pid)[:1]
        assert os.getpgid(scheduler) == scheduler != os.getpgid(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: _gone(scheduler), 10, 0.05,
                   what="the scheduler to die with its parent")
    finally:
        stop_mailer(proc, log)

"""Faults on real parts: a worker SIGKILLed mid-send, Redis SIGKILLed during a send and a
burst of signups, a Celery process that exits, web requests while Redis is gone.

No beat runs in any of these: the workers' own housekeeping (heartbeats, the tick under
its turn) has to recover everything, with the default lease and liveness settings.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select

from mailer.db import db
from mailer.models import Delivery, DeliveryStatus, Subscriber
from mailer.services import deliveries
from tests.helpers.app import make_app
from tests.helpers.delivery import (
    add_readers,
    delivery_states,
    make_renderer,
    new_issue,
    own_broker,
    per_recipient,
    wait_finished,
)
from tests.helpers.servers import (
    ROOT,
    RedisServer,
    WorkerProcess,
    children,
    free_port,
    start_mailer,
    stop_mailer,
    wait_until,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def start_send(steering, readers: int) -> tuple[int, list[str]]:
    emails = add_readers(readers, names=False)
    with steering.app_context():
        issue_id = new_issue()
        with db.transaction() as s:  # the commit hands the batches to the workers
            deliveries.start_send(
                s, issue_id, settings=steering.extensions["mailer.settings"],
                render=make_renderer(size=4000),
            )
    return issue_id, emails


def held_by(pids: list[int], issue_id: int) -> int:
    """Rows of the issue in flight whose claim names one of these processes."""
    with db.transaction() as s:
        claims = s.scalars(
            select(Delivery.claimed_by).where(
                Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.SENDING
            )
        ).all()
    return sum(1 for c in claims if c and any(f":{pid}." in c for pid in pids))


def check_exactly_once(smtp, emails, issue_id) -> list[str]:
    got = per_recipient(smtp, emails)
    states = delivery_states(issue_id)
    uncertain = [e for e, st in states.items() if st == "uncertain"]
    assert set(states.values()) <= {"sent", "uncertain"}
    assert all(got[e] == 1 for e, st in states.items() if st == "sent")
    assert all(got[e] <= 1 for e in uncertain)
    return uncertain


@pytest.mark.alone  # a recovery time is measured: other tests' load would stretch it
def test_a_worker_killed_mid_send_is_recovered_within_a_minute_without_beat(
    app, env, smtp, tmp_path
):
    # Default lease (600 s), heartbeat and timeout; only the rate is limited, so that the
    # kill lands mid-send and each worker holds rows.
    env = own_broker(env, tmp_path, MAILER_RATE_LIMIT="300", MAILER_SEND_BATCH="100")
    steering = make_app(env)
    victim = WorkerProcess(env, tmp_path / "victim.log").start()
    survivor = WorkerProcess(env, tmp_path / "survivor.log").start()
    try:
        issue_id, emails = start_send(steering, 3000)
        wait_until(lambda: len(smtp.messages) >= 600, 60, 0.01, what="600 messages")
        pids = children(victim.proc.pid)
        held = held_by(pids, issue_id)
        victim.kill()  # SIGKILL to the supervisor, the Celery process and its children
        killed = time.monotonic()
        assert held > 0, "the killed worker held no rows: the test proves nothing"
        assert len(smtp.messages) < len(emails)
        assert wait_finished(issue_id, 60) == "finished", survivor.log()
        took = time.monotonic() - killed
    finally:
        victim.stop()
        survivor.stop()
    uncertain = check_exactly_once(smtp, emails, issue_id)
    print(f"\nheld by the killed worker: {held}; finished {took:.1f} s after the kill; "
          f"uncertain: {len(uncertain)}")
    assert took <= 60
    assert len(uncertain) <= 2 * 25  # one group per killed process (MAILER_SEND_GROUP)


def test_redis_killed_during_a_send_and_a_burst_of_signups(app, env, smtp, tmp_path):
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    env = {
        # A batch the worker had just fetched when Redis died cannot be acknowledged or put
        # back; kombu keeps it in Redis's unacked set until its visibility timeout, so only
        # the lease hands its rows out again. A one-minute lease lets the send finish within
        # the test's two minutes; a killed worker's rows need no lease (the test above).
        **own_broker(env, tmp_path, MAILER_RATE_LIMIT="400", MAILER_SEND_BATCH="100",
                     MAILER_SEND_LEASE="60"),
        "MAILER_REDIS_URL": redis.url,
    }
    steering = make_app(env)
    workers = [WorkerProcess(env, tmp_path / f"worker{k}.log").start() for k in range(2)]
    port = free_port()
    web, web_log = start_mailer(
        ["web", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env, tmp_path / "web.log",
    )
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, int | str] = {}
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), 60, 0.2, what="mailer web")
        issue_id, emails = start_send(steering, 2000)
        stop_burst = threading.Event()

        def signups(k: int) -> None:
            with httpx.Client(timeout=10) as client:
                n = 0
                while not stop_burst.is_set() and n < 150:
                    email = f"burst{k}-{n}@signup.example"
                    try:
                        code = client.post(f"{base}/api/v1/subscribe",
                                           json={"email": email}).status_code
                    except httpx.HTTPError as e:
                        code = type(e).__name__
                    answers[email] = code
                    n += 1

        clients = [threading.Thread(target=signups, args=(k,)) for k in range(6)]
        for c in clients:
            c.start()
        wait_until(lambda: len(smtp.messages) >= 400 and len(answers) >= 150, 60, 0.01,
                   what="the send and the signups under way")
        redis.kill()
        time.sleep(2.0)
        redis.start()  # the same port and append-only file
        for c in clients:
            c.join(120)
        accepted = sorted(e for e, code in answers.items() if code == 202)
        assert wait_finished(issue_id, 120) == "finished"
        wait_until(lambda: all(smtp.to(e) for e in accepted), 150, 0.5,
                   what="a confirmation for every accepted signup")
        time.sleep(2.0)  # nothing more may arrive
        alive = [w.proc.poll() is None for w in workers]
    finally:
        stop_mailer(web, web_log)
        for w in workers:
            w.stop()
        redis.stop()
    codes = {code for code in answers.values()}
    print(f"\nsignups: {len(answers)} answered {codes}; digest: {len(emails)} readers")
    assert codes == {202}, "every signup is accepted while Redis is away, never a 5xx"
    assert all(len(smtp.to(e)) == 1 for e in accepted), "exactly one confirmation each"
    with db.transaction() as s:
        rows = s.scalar(select(func.count()).where(Subscriber.email.in_(accepted)))
    assert rows == len(accepted)
    check_exactly_once(smtp, emails, issue_id)
    assert all(alive), "a worker exited for good"


def _answers(url: str):
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_the_supervisor_starts_a_worker_again_after_it_exits(app, env, tmp_path):
    env = own_broker(env, tmp_path)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        (celery_pid,) = children(worker.proc.pid)[:1]
        os.kill(celery_pid, signal.SIGKILL)  # what an "Unrecoverable error" exit looks like
        wait_until(lambda: "starting it again" in worker.log(), 20, 0.1, what="the restart")
        wait_until(lambda: worker.log().count(" ready.") >= 2, 60, 0.2, what="ready again")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert worker.proc.returncode == 0  # SIGTERM still stops it, warmly, for good


def test_web_and_beat_without_redis(app, env, smtp, tmp_path, make_email):
    redis = RedisServer(tmp_path / "redis").start()
    env = {**own_broker(env, tmp_path), "MAILER_REDIS_URL": redis.url,
           "MAILER_TICK_SECONDS": "1"}
    port = free_port()
    web, web_log = start_mailer(["web", "--host", "127.0.0.1", "--port", str(port)], env,
                         tmp_path / "web.log")
    beat, beat_log = start_mailer(["beat", "--loglevel", "INFO"], env, tmp_path / "beat.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz") == 200, 60, 0.2, what="mailer web")
        redis.kill()
        email = make_email()
        with httpx.Client(timeout=10) as client:
            signup = client.post(f"{base}/api/v1/subscribe", json={"email": email})
            view = client.post(f"{base}/api/v1/pageviews", json={"url": "https://x.example/a"})
            health = client.get(f"{base}/healthz")
        assert signup.status_code == 202  # kept in SQL; the sweeper sends the confirmation
        assert view.status_code == 204  # a lost count, not an error
        assert health.status_code == 503 and health.json()["broker"] != "ok"
        time.sleep(3)  # beat tries to send ticks into the void
        redis.start()
        sent = lambda: (tmp_path / "beat.log").read_text().count("Sending due task tick")
        before = sent()
        wait_until(lambda: sent() >= before + 3, 30, 0.5, what="beat ticking again")
        assert beat.poll() is None and web.poll() is None
    finally:
        stop_mailer(web, web_log)
        stop_mailer(beat, beat_log)
        redis.stop()
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(Subscriber.email == email)) == 1


def test_the_signup_benchmark_checks_every_signup(pg_database, redis_server):
    """A smoke run of `mailer bench signups` (its checks, not its speed)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=pg_database.url, MAILER_REDIS_URL=redis_server.url,
               PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "mailer.cli", "bench", "signups", "--clients", "4",
         "--requests", "61", "--rounds", "2", "--web-workers", "1", "--redis-db", "14",
         "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # The loads in two turns each (31 and 30 requests), counted together.
    assert result["rounds"] == 2
    assert result["accepted"] == result["rows"] == 61
    assert result["confirmations"] == {"1": 61}
    assert result["bare"]["codes"] == {"202": 61} and result["signup"]["requests"] == 61
    assert result["ratio"] > 0
    # Both servers were warmed up (not counted) once all their workers had started.
    assert result["warm_up"] == {"bare": 40, "signup": 40}
    # Where the CPU went, per request: every party is read, and the confirmations' cost
    # (mailed within the signups' window) is the worker's.
    cpu = result["cpu_us_per_request"]
    parties = {"web", "worker", "postgres", "redis", "clients", "smtp server"}
    assert set(cpu["bare"]) == set(cpu["signup"]) == parties | {"total"}
    assert cpu["bare"]["web"] > 0 and cpu["signup"]["web"] > 0
    assert cpu["signup"]["worker"] > 0
    assert all(c["total"] == sum(v for k, v in c.items() if k != "total") for c in cpu.values())

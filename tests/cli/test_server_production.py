"""The production processes as ops run them: `mailer web` (gunicorn) and `mailer beat`."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.servers import free_port, start_mailer, stop_mailer, wait_until

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

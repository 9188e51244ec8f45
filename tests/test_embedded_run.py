"""`mailer run` on a fresh instance folder: no database server, no Redis, no SMTP server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.support import ROOT, free_port, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture
def embedded(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_INSTANCE_PATH=str(tmp_path / "instance"), MAILER_FORM_MIN_SECONDS="0")
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer.cli", "run", "--port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://localhost:{port}"

    def healthy():
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "run.log").read_text())
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, 0.2, what="mailer run to answer")
    yield base, proc, tmp_path
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_fresh_install_subscribe_read_outbox_confirm_unsubscribe(embedded, browser):
    base, proc, tmp_path = embedded
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20000)
    try:
        page.goto(f"{base}/subscribe")
        page.get_by_label("Email address").fill("first.reader@example.com")
        page.get_by_role("button", name="Subscribe").click()
        page.get_by_role("heading", name="Almost done: check your inbox").wait_for()

        # The confirmation is written to the outbox folder as an .eml file...
        outbox = tmp_path / "instance" / "outbox"
        wait_until(lambda: list(outbox.glob("*.eml")), 30, 0.2, what="the confirmation .eml")

        # ...and shown on the console's outbox page, after creating the first account.
        page.goto(f"{base}/admin")
        page.get_by_role("heading", name="Welcome to your mailer").wait_for()
        page.get_by_label("Email address").fill("admin@example.com")
        page.get_by_label("Password", exact=False).first.fill("a long admin password")
        page.get_by_label("Password again").fill("a long admin password")
        page.get_by_role("button", name="Create account").click()
        page.get_by_role("navigation").get_by_role("link", name="Outbox").click()
        page.get_by_role("link", name="Please confirm your subscription").click()
        text = page.locator("#text-part").inner_text()
        confirm_url = next(w for w in text.split() if "/confirm/" in w)
        assert confirm_url.startswith(base + "/confirm/")

        page.goto(confirm_url)
        page.get_by_role("button", name="Yes, subscribe me").click()
        page.get_by_role("heading", name="You are subscribed").wait_for()

        wait_until(lambda: len(list(outbox.glob("*.eml"))) == 2, 30, 0.2, what="the welcome mail")
        page.goto(f"{base}/admin/outbox")
        page.get_by_role("link", name="Welcome to The Newsletter").click()
        page.get_by_text("Headers").click()
        headers = page.locator("details.headers").inner_text()
        assert "List-Unsubscribe-Post" in headers
        unsubscribe = next(w.strip("<>,") for w in headers.split() if "/unsubscribe/" in w)
        page.goto(unsubscribe)
        page.get_by_role("button", name="Unsubscribe").click()
        page.get_by_role("heading", name="You are unsubscribed").wait_for()
    finally:
        context.close()

    # Ctrl+C stops web and worker together.
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    assert proc.wait(30) == 0 or proc.returncode in (-signal.SIGINT, 130)
    assert time.monotonic() - started < 30
    assert (tmp_path / "instance" / "mailer.sqlite").exists()

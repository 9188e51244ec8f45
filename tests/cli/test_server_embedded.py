"""`mailer run` on a fresh instance folder: no database server, no Redis, no SMTP server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from tests.helpers.feeds import FeedServer, rss
from tests.helpers.servers import ROOT, free_port, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture
def embedded(tmp_path):
    with _embedded(tmp_path) as running:
        yield running


@contextlib.contextmanager
def _embedded(tmp_path, *args, **settings):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_INSTANCE_PATH=str(tmp_path / "instance"), MAILER_FORM_MIN_SECONDS="0",
               **settings)
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer.cli", "run", "--port", str(port), *args],
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

    try:
        wait_until(healthy, 60, 0.2, what="mailer run to answer")
        yield base, proc, tmp_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _sign_up(page, base: str, email: str) -> None:
    page.goto(f"{base}/subscribe")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Almost done: check your inbox").wait_for()


def _first_account_then_confirmation(page, base: str, email: str) -> str:
    """Create the first console account, open the confirmation mail in the outbox and
    return its link."""
    page.goto(f"{base}/admin")
    page.get_by_role("heading", name="Welcome to your mailer").wait_for()
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password", exact=False).first.fill("a long admin password")
    page.get_by_label("Password again").fill("a long admin password")
    page.get_by_role("button", name="Create account").click()
    page.get_by_role("navigation").get_by_role("link", name="Outbox").click()
    page.get_by_role("link", name="Please confirm your subscription").click()
    text = page.locator("#text-part").inner_text()
    return next(w for w in text.split() if "/confirm/" in w)


def test_fresh_install_subscribe_read_outbox_confirm_unsubscribe(embedded, browser):
    base, proc, tmp_path = embedded
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20000)
    try:
        _sign_up(page, base, "first.reader@example.com")

        # The confirmation is written to the outbox folder as an .eml file...
        outbox = tmp_path / "instance" / "outbox"
        wait_until(lambda: list(outbox.glob("*.eml")), 30, 0.2, what="the confirmation .eml")

        # ...and shown on the console's outbox page, after creating the first account.
        confirm_url = _first_account_then_confirmation(page, base, "admin@example.com")
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

    # Ctrl+C stops web and worker together. The worker may take up to 15 s to finish its
    # task (then it is killed) after gunicorn's own shutdown; 60 s leaves a busy machine
    # room for both and still fails a process that hangs.
    os.killpg(proc.pid, signal.SIGINT)
    started = time.monotonic()
    assert proc.wait(60) == 0 or proc.returncode in (-signal.SIGINT, 130)
    assert time.monotonic() - started < 60
    assert (tmp_path / "instance" / "mailer.sqlite").exists()


def test_the_readme_tour_from_subscribe_to_the_digest_in_the_outbox(embedded, browser):
    """The README's five minutes, as a newcomer follows them: the sample feed, a reader who
    signs up and confirms, an issue composed (its old articles added by hand), a test, the
    send, and the digest read in the outbox."""
    base, proc, tmp_path = embedded
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["MAILER_INSTANCE_PATH"] = str(tmp_path / "instance")
    synced = cli(env, "articles", "sync", "tests/fixtures/feeds/wordpress-atom10.xml")
    assert synced.returncode == 0 and "10 new" in synced.stdout, synced.stdout + synced.stderr
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20000)
    try:
        _sign_up(page, base, "tour.reader@example.com")
        # The worker writes the confirmation a moment after the answer; the outbox page
        # lists what is there when it is opened (a newcomer who looks too early reloads).
        outbox = tmp_path / "instance" / "outbox"
        wait_until(lambda: list(outbox.glob("*.eml")), 30, 0.2, what="the confirmation .eml")
        confirm_url = _first_account_then_confirmation(page, base, "editor@example.com")
        page.goto(confirm_url)
        page.get_by_role("button", name="Yes, subscribe me").click()
        page.get_by_role("heading", name="You are subscribed").wait_for()

        page.goto(f"{base}/admin")
        page.get_by_role("navigation").get_by_role("link", name="Issues").click()
        page.get_by_role("button", name="Compose a new issue").click()
        # The sample's articles are from 2009: Latest is empty and says why...
        assert "published on 2009" in page.locator("#latest-empty").inner_text()
        # ...and the README says to add them by hand.
        page.get_by_role("button", name="Find").click()
        for _ in range(2):
            page.get_by_role("button", name="Add:").first.click()
        page.get_by_role("button", name="Send test").click()
        page.get_by_role("link", name="Review and send").first.click()
        page.get_by_role("button", name="Send now to 1 reader").click()
        page.get_by_text("1 of 1 messages done").wait_for(timeout=60000)

        page.get_by_role("navigation").get_by_role("link", name="Outbox").click()
        page.get_by_role("link", name="[Test] The Newsletter").wait_for()
        digest = page.locator("tr", has_text="tour.reader@example.com").filter(
            has_text="The Newsletter:")
        digest.get_by_role("link").click()
        assert "Unsubscribe" in page.locator("#text-part").inner_text()
    finally:
        context.close()


def cli(base_env: dict, *args, timeout=120) -> subprocess.CompletedProcess:
    """`mailer ...` in a second terminal: its own process, the same instance folder."""
    return subprocess.run(
        [sys.executable, "-m", "mailer.cli", *args], env=base_env, cwd=ROOT,
        capture_output=True, text=True, timeout=timeout,
    )


def test_commands_in_a_second_terminal_reach_the_running_worker(embedded):
    base, proc, tmp_path = embedded
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["MAILER_INSTANCE_PATH"] = str(tmp_path / "instance")
    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>Story {i}</title><link>https://news.example/story-{i}</link>"
        f"<guid>https://news.example/story-{i}</guid>"
        f"<pubDate>{format_datetime(now - timedelta(hours=i + 1))}</pubDate>"
        f"<description>What happened in story {i}.</description></item>"
        for i in range(3)
    )
    feed = tmp_path / "feed.xml"
    feed.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>News</title>'
                    f"<link>https://news.example/</link>{items}</channel></rss>")
    readers = tmp_path / "readers.csv"
    readers.write_text("email\n" + "".join(f"reader{i}@example.com\n" for i in range(5)))

    assert cli(env, "articles", "sync", str(feed)).returncode == 0
    assert cli(env, "subscribers", "import", str(readers), "--source", "test").returncode == 0
    created = cli(env, "digest", "create", "--subject", "This week")
    assert created.returncode == 0, created.stderr
    issue_id = created.stdout.strip().splitlines()[-1]

    # `send --wait` only enqueues and watches: the running `mailer run` worker does the work.
    sent = cli(env, "digest", "send", issue_id, "--wait")
    assert sent.returncode == 0, sent.stderr
    status = json.loads(cli(env, "digest", "status", issue_id, "--json").stdout)
    assert status["status"] == "finished" and status["counts"]["sent"] == 5

    outbox = tmp_path / "instance" / "outbox"
    digests = [p for p in outbox.glob("*.eml") if "Subject: This week" in p.read_text()]
    assert len(digests) == 5
    assert {p.read_text().split("X-Envelope-To: ")[1].split()[0] for p in digests} == {
        f"reader{i}@example.com" for i in range(5)
    }


def test_a_fresh_mailer_run_syncs_its_feeds_at_once(tmp_path):
    """MAILER_FEEDS is synced when the mailer starts, not after the first sync period."""
    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>Story {i}</title><link>https://news.example/story-{i}</link>"
        f"<guid>https://news.example/story-{i}</guid>"
        f"<pubDate>{format_datetime(now - timedelta(hours=i + 1))}</pubDate>"
        f"<description>What happened in story {i}.</description></item>"
        for i in range(3)
    )
    server = FeedServer().start()
    server.serve_feed("/feed.xml", rss(items))
    started = time.monotonic()
    try:
        with _embedded(tmp_path, MAILER_FEEDS=server.url("/feed.xml")):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
            env["MAILER_INSTANCE_PATH"] = str(tmp_path / "instance")

            def listed():
                out = cli(env, "articles", "list", "--json")
                return out.returncode == 0 and len(json.loads(out.stdout)) == 3

            wait_until(listed, 60 - (time.monotonic() - started), 1.0,
                       what="the feed's articles within a minute of the start")
            assert len(server.requests_to("/feed.xml")) == 1  # once, not once per tick
    finally:
        server.stop()


@pytest.mark.parametrize("command", ["run", "web"])
def test_a_port_in_use_is_one_line_naming_the_option_and_exit_1(tmp_path, command):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env["MAILER_INSTANCE_PATH"] = str(tmp_path / "instance")
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "mailer.cli", command, "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "--port" in lines[0]
    assert "running" not in result.stderr and "Connection in use" not in result.stderr
    assert time.monotonic() - started < 30


def test_the_access_log_is_there_when_asked_for(tmp_path):
    with _embedded(tmp_path, "--access-log") as (base, _proc, _path):
        assert httpx.get(f"{base}/subscribe", timeout=10).status_code == 200
        wait_until(lambda: "GET /subscribe" in (tmp_path / "run.log").read_text(), 10, 0.2,
                   what="the request in the access log")

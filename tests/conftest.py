"""Fixtures: the app on PostgreSQL + Redis (production pass) or SQLite (embedded pass).

`--db postgres` (default) runs against a fresh database on the local PostgreSQL server and a
private redis-server; `--db sqlite` runs the embedded mode (SQLite, SQLite broker, no Redis)
and deselects the tests marked `redis`. Both passes use a real SMTP server (aiosmtpd) and,
where a test asks for it, a real Celery worker process and headless Chromium.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import threading

import pytest

from tests.helpers.app import ARTIFACTS, MailerRunner, make_app, start_clean
from tests.helpers.servers import (
    ROOT,
    PgDatabase,
    RedisServer,
    SmtpSink,
    WorkerProcess,
    free_port,
)


def pytest_addoption(parser):
    parser.addoption(
        "--db",
        choices=["postgres", "sqlite"],
        default=os.environ.get("MAILER_TEST_DB", "postgres"),
        help="postgres: production stack (PostgreSQL + Redis); sqlite: embedded mode",
    )
    parser.addoption(
        "--alone",
        choices=["include", "exclude", "only"],
        default="include",
        help="the tests marked `alone` (timing-sensitive): run them too (default), leave "
        "them out (the parallel step of scripts/test) or run only them (its serial step)",
    )


def pytest_collection_modifyitems(config, items):
    embedded = config.getoption("--db") == "sqlite"
    alone = config.getoption("--alone")
    keep, drop = [], []
    for item in items:
        # Redis-only behaviour (the shared rate limiter, broker restarts) does not exist in
        # the embedded mode; those tests run in the PostgreSQL pass, which CI always runs too.
        wanted = not (embedded and item.get_closest_marker("redis"))
        if alone != "include":
            wanted = wanted and (alone == "only") == bool(item.get_closest_marker("alone"))
        (keep if wanted else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker: the long runs (marked `slow`) come first, so that the
        # processes start them at once, side by side, and none is left to run on its own at
        # the end. Every worker sorts the same way, as xdist requires.
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config):
    return f"mailer test database: {config.getoption('--db')}"


@pytest.fixture(scope="session")
def db_kind(pytestconfig) -> str:
    return pytestconfig.getoption("--db")


@pytest.fixture(scope="session")
def smtp():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def redis_server(db_kind, tmp_path_factory):
    if db_kind != "postgres":
        yield None
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own, to stop, pause or kill (the session's is shared)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database(db_kind):
    if db_kind != "postgres":
        yield None
        return
    database = PgDatabase().create()
    yield database
    database.drop()


@pytest.fixture(scope="session")
def live_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def base_env(db_kind, tmp_path_factory, smtp, redis_server, pg_database, live_port) -> dict:
    """The MAILER_* settings every app, worker and live server of this session shares."""
    instance = tmp_path_factory.mktemp("instance")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MAILER_")
    }
    env.update(
        MAILER_INSTANCE_PATH=str(instance),
        MAILER_SECRET_KEY=secrets.token_urlsafe(32),
        MAILER_SMTP_URL=smtp.url,
        MAILER_BASE_URL=f"http://localhost:{live_port}",
        MAILER_FROM="The Daily Test <news@daily.example>",
        MAILER_POSTAL_ADDRESS="1 Test Street, 10115 Berlin, Germany",
        MAILER_FORM_MIN_SECONDS="0",
        MAILER_SIGNUP_LIMIT_IP="1000 per minute",
        MAILER_SIGNUP_LIMIT_ADDRESS="1000 per minute",
        MAILER_SECTIONS="news=News,business=Business,sport=Sport,culture=Culture",
        MAILER_CORS_ORIGINS="https://www.daily.example",
        # The tests' webhook receivers listen on 127.0.0.1 over plain HTTP (the address
        # checks themselves are tested with these off).
        MAILER_WEBHOOK_ALLOW_HTTP="on",
        MAILER_WEBHOOK_ALLOW_PRIVATE="on",
        PYTHONPATH=str(ROOT),
    )
    if db_kind == "postgres":
        env.update(MAILER_DATABASE_URL=pg_database.url, MAILER_REDIS_URL=redis_server.url)
    from mailer.config import load_settings
    from mailer.migrate import upgrade

    upgrade(load_settings(env).database_url, load_settings(env))
    return env


@pytest.fixture
def env(base_env) -> dict:
    return dict(base_env)


@pytest.fixture(scope="session")
def started_workers() -> list:
    """The session's `worker`, once a test has started it (the `app` fixture settles it
    without starting it for tests that do not ask for it)."""
    return []


@pytest.fixture
def app(base_env, smtp, redis_server, started_workers):
    """A fresh app on an empty database, an empty Redis and an empty SMTP sink."""
    from mailer.db import db

    application = make_app(base_env)
    start_clean(base_env, smtp, redis_server, started_workers)
    yield application
    db.session.remove()


@pytest.fixture
def rt(app):
    """The app's runtime (settings, transport, ...), inside the app's context: for tests that
    call services and tasks in-process."""
    with app.app_context():
        yield app.extensions["mailer"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def no_newsletters(app):
    """No newsletter at all, not even the first one every database has: for the tests of
    newsletters themselves, which make each one they use."""
    from sqlalchemy import delete

    from mailer.db import db
    from mailer.models import Newsletter

    with db.transaction() as s:
        s.execute(delete(Newsletter))


@pytest.fixture
def runner(app):
    return MailerRunner(app)


_emails = itertools.count(1)
_run = secrets.token_hex(3)


@pytest.fixture
def make_email():
    """Sequential unique addresses, unique across runs too."""
    return lambda prefix="reader": f"{prefix}{next(_emails)}.{_run}@example.com"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a worker process (the session's `worker`, or one of its own
    under that name): the end of the worker's log goes into the report, so that a mail that
    never came shows what the worker did meanwhile (each task's arguments, result, retries)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    proc = getattr(item, "funcargs", {}).get("worker")
    if isinstance(proc, WorkerProcess):
        report.sections.append((f"worker log, the end ({proc.log_path})", proc.log(20000)))


@pytest.fixture(scope="session")
def worker(base_env, tmp_path_factory, started_workers):
    """A real `mailer worker` process (prefork, 2 children) shared by the session.

    Its housekeeping tick is off: tests drive sweeps themselves, at the times they choose
    (the tests of the workers' own tick start workers of their own).
    """
    proc = WorkerProcess(
        {**base_env, "MAILER_WORKER_TICK": "off"}, tmp_path_factory.mktemp("worker") / "worker.log",
        # Webhook attempts are left to the webhook tests' own workers, with their settings.
        args=["--pool", "prefork", "--concurrency", "2", "-Q", "celery,send"],
    ).start()
    started_workers.append(proc)
    yield proc
    started_workers.remove(proc)
    proc.stop()


@pytest.fixture(scope="session")
def live_server(base_env, live_port):
    """The app served over HTTP on MAILER_BASE_URL's port, for the browser tests."""
    from werkzeug.serving import make_server

    application = make_app(base_env)
    server = make_server("127.0.0.1", live_port, application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{live_port}"
    server.shutdown()


def chromium_path() -> str:
    path = os.environ.get("MAILER_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        raise RuntimeError("Chromium is not installed (scripts/test installs Debian's chromium)")
    return path


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context; a screenshot of the last page is kept in test-artifacts/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15000)
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.node.nodeid.split("::")[-1].replace("/", "_").replace("[", "-").strip("]")
    try:
        pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        context.close()


def _compile_url_builders_once() -> None:
    """Every test builds its app afresh, and werkzeug writes and compiles two small Python
    functions per URL rule each time: about two thirds of create_app's CPU (some 85 ms a
    test here, times two thousand tests). The functions depend only on the rule itself, so
    the tests compile each rule's once and bind it to every later copy of that rule; the
    URLs built are the same."""
    from werkzeug.routing.rules import Rule

    compile_builder = Rule._compile_builder
    compiled: dict = {}

    def once(self, append_unknown: bool = True):
        key = (type(self), self.rule, self.subdomain, self.host, repr(self.defaults),
               self.merge_slashes, self.map.host_matching, repr(self._trace),
               tuple((k, type(c)) for k, c in sorted(self._converters.items())), append_unknown)
        if key not in compiled:
            compiled[key] = compile_builder(self, append_unknown)
        return compiled[key]

    Rule._compile_builder = once


_compile_url_builders_once()

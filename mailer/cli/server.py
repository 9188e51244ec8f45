"""Processes: run (embedded all-in-one), web, worker, beat; and database migrations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from mailer.cli import Context, cli, pass_ctx


def web_options(host: str, port: int, workers: int, proxy_hops: int = 0) -> dict:
    """gunicorn's settings for `mailer web` (and the signup benchmark's bare endpoint, which
    must run under the very same ones)."""
    return {"bind": f"{host}:{port}", "workers": workers, "worker_class": "gthread",
            "threads": 4, "accesslog": "-",
            "forwarded_allow_ips": "*" if proxy_hops else "127.0.0.1"}


def check_port(host: str, port: int) -> None:
    """Exit 1 with one line naming --port when the address is taken (gunicorn would say
    "Connection in use" five times, after the banner said the mailer was running)."""
    import errno
    import socket

    from mailer.cli import fail

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        fail(f"cannot listen on --host {host}: {e.strerror}")
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind(address)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use by another program; "
                 f"choose a free one with --port (for example --port {port + 1})")
        fail(f"cannot listen on {host}:{port}: {e.strerror} (choose another with --port)")
    finally:
        probe.close()


def _gunicorn(factory, options: dict) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return factory()

    Server().run()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@pass_ctx
def run(ctx: Context, host: str, port: int, access_log: bool):
    """Run everything in one command: web, worker and scheduler (embedded default)."""
    check_port(host, port)
    if not os.environ.get("MAILER_BASE_URL"):
        # Links in mail must point at this server; the worker process inherits the setting.
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "localhost") else host
        os.environ["MAILER_BASE_URL"] = f"http://{shown}:{port}"
    settings = ctx.settings  # validates the configuration and applies migrations
    worker = subprocess.Popen(
        [sys.executable, "-m", "mailer.cli", "worker", "--beat", "--pool", "threads",
         "--concurrency", "4", "--loglevel", "WARNING"],
    )
    where = f"http://{host}:{port}"
    mode = "embedded (SQLite, no Redis)" if settings.embedded else "production services"
    mail = f"SMTP {settings.smtp.host}:{settings.smtp.port}" if settings.smtp else (
        f"the outbox at {where}/admin/outbox"
    )
    click.echo(
        f"The mailer is running on {mode}; mail goes to {mail}.\n"
        f"  Subscribe page: {where}/subscribe\n"
        f"  Console:        {where}/admin\n"
        f"  Data folder:    {settings.instance_path}\n"
        "Press Ctrl+C to stop.",
        err=True,
    )
    try:
        from mailer import create_app

        _gunicorn(
            lambda: create_app(settings),
            {"bind": f"{host}:{port}", "workers": 1, "worker_class": "gthread", "threads": 8,
             "accesslog": "-" if access_log else None, "loglevel": "warning"},
        )
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log every request to stderr.")
@pass_ctx
def web(ctx: Context, host: str, port: int, workers: int, access_log: bool):
    """The production web process (gunicorn)."""
    check_port(host, port)
    settings = ctx.settings
    from mailer import create_app

    options = web_options(host, port, workers, settings.proxy_hops)
    if not access_log:
        options["accesslog"] = None
    _gunicorn(lambda: create_app(settings), options)


def _supervised(wanted: bool, what: str, stop_grace: float | None = None) -> None:
    """Become the supervising parent of this same command (mailer/supervise.py), unless this
    process is the supervised child or supervision is off; returns only in the child."""
    from mailer import supervise

    if wanted and not supervise.is_child():
        supervise.main([sys.executable, "-m", "mailer.cli", *sys.argv[1:]], what, stop_grace)
    if supervise.is_child():
        supervise.die_with_parent()


@cli.command()
@click.option("--concurrency", "-c", type=int, default=None, help="Processes (default: cores).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork",
              show_default=True)
@click.option("--queues", "-Q", default="celery,send,hooks", show_default=True)
@click.option("--beat", is_flag=True, help="Also run the scheduler in this process.")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Run the worker under a parent that starts it again if it crashes.")
@pass_ctx
def worker(ctx: Context, concurrency, pool, queues, beat, loglevel, supervise):
    """The Celery worker that renders and sends."""
    _supervised(supervise, "the worker")
    ctx.web = False
    celery = ctx.app.extensions["celery"]
    os.environ.setdefault("C_FORCE_ROOT", "1")  # containers often run as root
    from mailer import supervise

    supervise.exit_after_unrecoverable_error()
    # What Celery forks from this process (the embedded scheduler, prefork pool processes)
    # dies with it, even when it is killed and cannot stop them. (The solo pool sends
    # worker_process_init in this process itself: nothing to do there.)
    from celery import signals

    worker_pid = os.getpid()

    def die_with_worker(**_):
        if os.getpid() != worker_pid:
            supervise.die_with(worker_pid)

    signals.beat_embedded_init.connect(die_with_worker, weak=False)
    signals.worker_process_init.connect(die_with_worker, weak=False)
    if ctx.settings.dkim_key_file or ctx.settings.dkim_ed25519_key_file:
        from mailer.mail import dkim

        dkim.preload()
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # once here, instead of at each pool process's first query
    # Celery's worker class itself, as its `celery worker` command builds it, rather than
    # that command: its module loads every other Celery command too, among them an
    # interactive shell (click_repl, prompt_toolkit) and a syntax highlighter (pygments),
    # 8 MB that each prefork child would carry.
    options = {"pool_cls": pool, "loglevel": loglevel, "queues": queues,
               "without_gossip": True, "without_mingle": True, "concurrency": concurrency}
    if beat:
        options.update(beat=True,
                       schedule_filename=str(ctx.settings.instance_path / "celerybeat-schedule"))
    process = celery.Worker(**options)
    # Everything loaded by now (the app, Celery's worker and pool, the broker's transport)
    # is what each prefork child starts with: frozen, the garbage collector never walks (and
    # so never copies) those objects in the children.
    import gc

    gc.freeze()
    process.start()
    sys.exit(process.exitcode)


@cli.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Run the scheduler under a parent that starts it again if it crashes.")
@pass_ctx
def beat(ctx: Context, loglevel, supervise):
    """The scheduler process (one is enough; several are safe)."""
    from mailer.supervise import SCHEDULER_STOP_GRACE

    _supervised(supervise, "the scheduler", SCHEDULER_STOP_GRACE)
    # SIGUSR1 writes every thread's stack to the log, as it does for Celery's worker: the
    # supervisor asks for them before it kills a scheduler that does not stop.
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    ctx.web = False
    celery = ctx.app.extensions["celery"]
    celery.start(["beat", f"--loglevel={loglevel}",
                  f"--schedule={ctx.settings.instance_path / 'celerybeat-schedule'}"])


@cli.group()
def db():
    """Database schema."""


@db.command()
def upgrade():
    """Apply migrations (Alembic) up to the newest."""
    from mailer.config import load_settings
    from mailer.migrate import upgrade as do_upgrade

    settings = load_settings()
    applied = do_upgrade(settings.database_url, settings)
    click.echo("migrated to the newest schema" if applied else "the schema is up to date")

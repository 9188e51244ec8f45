"""What a sending worker carries: only what it sends with, and children that die with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.servers import ROOT, WorkerProcess, children, wait_until

# Libraries only feed syncing, rendering, signups or the report webhook need: the HTML
# sanitizer (nh3) and the address checker (email_validator) among them. A prefork worker's
# parent would otherwise carry them, and hand them to every sending process.
NOT_FOR_SENDING = ("httpx", "feedparser", "markdown_it", "css_inline", "pycparser", "nh3",
                   "email_validator")
# What only the embedded mode needs: on PostgreSQL and Redis no worker process loads SQLite.
EMBEDDED_ONLY = ("sqlite3", "_sqlite3")


def test_a_sending_worker_does_not_load_what_only_other_work_needs(env, tmp_path, db_kind):
    unwanted = NOT_FOR_SENDING + (EMBEDDED_ONLY if db_kind == "postgres" else ())
    probe = (
        "import sys\n"
        "from mailer import create_app\n"
        "app = create_app(web=False)\n"
        "import mailer.tasks\n"
        "from mailer.mail import dkim\n"
        "dkim.preload()\n"
        "print(' '.join(sorted(m for m in %r if m in sys.modules)))\n" % (unwanted,)
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"a sending worker imports {out.stdout.strip()}"
    # They still load where they are needed.
    use = probe.replace("import mailer.tasks\n", "import mailer.tasks\n"
                        "from mailer.feeds import Http\n"
                        "from mailer.services.render import markdown_html\n"
                        "markdown_html('*hi*')\n"
                        "from mailer.services.subscriptions import normalize_email\n"
                        "assert normalize_email('Reader@Example.com') == 'reader@example.com'\n"
                        "from mailer.feeds.html import html_to_text\n"
                        "assert html_to_text('<p>a</p><p>b</p>') == 'a b'\n")
    out = subprocess.run([sys.executable, "-c", use], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert {"httpx", "markdown_it", "nh3", "email_validator"} <= set(out.stdout.split())


# Celery's command line (celery.bin): every `celery` subcommand, with an interactive shell.
# (Its highlighter, pygments, is not named: the embedded mode's worker loads it anyway, with
# the migrations it applies at start.)
CELERY_COMMAND_LINE = ("click_repl", "prompt_toolkit")

# Run in a real `mailer worker`: each pool process, once forked, writes what it carries.
POOL_PROBE = """
import gc, os, sys
from pathlib import Path
from celery import signals

@signals.worker_process_init.connect(weak=False)
def report(**_):
    import celery.concurrency.prefork as prefork
    frozen = not any(o is prefork.TaskPool.on_start for o in gc.get_objects())
    Path(sys.argv[1], str(os.getpid())).write_text(
        " ".join(sorted(sys.modules)) + "\\nfrozen:" + str(frozen))

from mailer.cli import main
main(["worker", "--pool", "prefork", "--concurrency", "1", "-Q", "send", "--no-supervise"])
"""


def test_a_pool_process_carries_no_command_line_and_starts_frozen(env, tmp_path, db_kind):
    """What a prefork child of `mailer worker` has loaded: not Celery's command line (its
    shell and highlighter, 8 MB), nor what only other work needs (nor, on PostgreSQL and
    Redis, SQLite); and the objects of the worker's own machinery, loaded when Celery builds
    its worker, are frozen for the garbage collector like the app's."""
    report = tmp_path / "report"
    report.mkdir()
    (tmp_path / "probe.py").write_text(POOL_PROBE)
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "probe.py"), str(report)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_until(lambda: any(report.iterdir()) or proc.poll() is not None, 60, 0.1,
                   what="a pool process to start")
        found = list(report.iterdir())
        assert found, (tmp_path / "worker.log").read_text()[-3000:]
        wait_until(lambda: "frozen:" in found[0].read_text(), 10, 0.1, what="the report")
        modules, frozen = found[0].read_text().split("\n")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
    loaded = set(modules.split())
    unwanted = NOT_FOR_SENDING + CELERY_COMMAND_LINE + (
        EMBEDDED_ONLY if db_kind == "postgres" else ())
    carried = sorted(m for m in loaded
                     if m.split(".")[0] in unwanted or m.startswith("celery.bin"))
    assert carried == [], f"a pool process carries {carried}"
    assert "celery.concurrency.prefork" in loaded and "mailer.tasks.delivery" in loaded
    assert frozen == "frozen:True"


def test_pool_processes_die_with_their_worker(env, tmp_path):
    """The pool processes ask the kernel to be killed with their parent (set through ctypes
    rather than billiard's cffi, which costs each of them 6 MB): a worker SIGKILLed alone
    leaves no sending process behind."""
    worker = WorkerProcess(env, tmp_path / "worker.log",
                           args=["--pool", "prefork", "--concurrency", "2", "--no-supervise"])
    worker.start()
    try:
        pool = children(worker.proc.pid)
        assert len(pool) == 2, worker.log()
        os.kill(worker.proc.pid, signal.SIGKILL)  # the main process only, not its group
        worker.proc.wait(10)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() and
                                   "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                                   for p in pool), 10, 0.1, what="the pool processes to exit")
    finally:
        worker.stop()  # closes its log; the worker is already gone


def _after_unrecoverable_error(env, grace: float, then: str) -> subprocess.CompletedProcess:
    """A process set up as a worker is (the guard installed, Celery's logging) that logs
    kombu's "Unrecoverable error" and then runs `then`."""
    probe = (
        "from mailer import create_app, supervise\n"
        "app = create_app(web=False)\n"
        f"supervise.exit_after_unrecoverable_error(grace={grace})\n"
        "app.extensions['celery'].log.setup(loglevel='INFO')\n"
        "import logging\n"
        "logging.getLogger('celery.worker.worker').critical(\n"
        "    'Unrecoverable error: %r', AttributeError('hostname'))\n"
        f"{then}\n"
    )
    return subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_worker_that_hangs_after_an_unrecoverable_error_exits_for_its_supervisor(env):
    """kombu's crash on a lost Redis connection is logged as "Unrecoverable error", and
    Celery's shutdown after it can hang; the guard ends the process so that the supervising
    parent starts a new one. Here Celery sets up its logging as a worker does, the error is
    logged, and the process then hangs."""
    started = time.monotonic()
    out = _after_unrecoverable_error(env, grace=1, then="import time; time.sleep(60)")
    assert out.returncode == 70, out.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "exiting so the supervisor starts a new worker" in out.stderr


def test_a_worker_that_exits_cleanly_after_an_unrecoverable_error_is_started_again(env):
    """Celery sometimes finishes its shutdown after kombu's crash, with exit code 0, which the
    supervising parent would take for a deliberate stop (seen in a fault test: one of two
    workers was gone for good). After that error, the process's exit code is 70."""
    started = time.monotonic()
    out = _after_unrecoverable_error(env, grace=30, then="import sys; sys.exit(0)")
    assert out.returncode == 70, out.stderr[-2000:]
    assert time.monotonic() - started < 25  # not the 30 s guard: the exit itself

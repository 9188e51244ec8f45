"""A small parent that keeps `mailer worker` and `mailer beat` running through broker faults.

Celery's worker reconnects to a restarted Redis by itself most of the time, but not always:
kombu's Redis transport has a long history of crashes on a lost connection (restoring
unacknowledged messages on a connection that is already gone raises `AttributeError:
'NoneType' object has no attribute 'hostname'` in `_connparams`, and its relatives), after
which the worker logs "Unrecoverable error" and exits. We cannot wait for each variant to be
fixed upstream, so `mailer worker` and `mailer beat` run the real process as a child of this
one and start it again whenever it exits without being asked to:

- the parent imports nothing but the standard library, so it costs a few megabytes, and it
  holds no connection that a fault could break;
- SIGTERM, SIGINT, SIGQUIT and SIGHUP are passed on to the child (a warm shutdown stays a
  warm shutdown), and then the parent exits with the child's code instead of restarting it;
- a child that exits on its own with a non-zero code is started again after a pause that
  doubles from one second up to `MAX_BACKOFF`, and goes back to one second once a child has
  run for `STABLE_SECONDS`; each restart is logged with the exit code and the pause;
- a child that exits with 0 on its own was stopped deliberately (Celery's remote `shutdown`
  command): the parent exits too.

Celery does not always manage to exit after that error: its shutdown can hang on the lost
connection, leaving a process that neither consumes nor exits, so the parent would wait for
ever; and when it does exit, its code can be 0, which would stop the parent too.
`exit_after_unrecoverable_error()`, installed in the child, ends the process when that
error has been logged and the process is still there `UNRECOVERABLE_GRACE` seconds later,
and turns any exit after that error into `EX_UNRECOVERABLE`.

Nothing is lost while the child is down: claims and owed mail live in SQL, and the sweepers
hand out again whatever a dead process held (see services/deliveries.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("mailer.supervise")

UNRECOVERABLE_GRACE = 10.0
EX_UNRECOVERABLE = 70  # EX_SOFTWARE: not 0, so the parent starts the process again

MAX_BACKOFF = 30.0
STABLE_SECONDS = 60.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# Set in the child's environment: the command runs the real process instead of a parent.
CHILD_MARK = "MAILER_SUPERVISED_CHILD"


def is_child() -> bool:
    return os.environ.get(CHILD_MARK) == "1"


def supervise(argv: list[str], what: str) -> int:
    """Run argv as a child until asked to stop; the child's last exit code."""
    stopping: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    env = {**os.environ, CHILD_MARK: "1"}
    backoff = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(argv, env=env)
        code = _wait(child)
        if stopping or code == 0:
            return code
        if time.monotonic() - started >= STABLE_SECONDS:
            backoff = 1.0
        log.error("%s exited with code %s; starting it again in %.0f s", what, code, backoff)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        backoff = min(backoff * 2, MAX_BACKOFF)


def _wait(child: subprocess.Popen) -> int:
    while True:
        try:
            code = child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        # A child killed by a signal reports -N; the shell's convention is 128 + N.
        return 128 - code if code < 0 else code


def main(argv: list[str], what: str) -> None:
    """Exit with the supervised child's code (used by `mailer worker` and `mailer beat`)."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/Supervisor] %(message)s"
    )
    sys.exit(supervise(argv, what))


class _ExitAfterUnrecoverable(logging.Handler):
    """Ends the process a little after Celery logs "Unrecoverable error", in case its own
    shutdown hangs (see the module docstring)."""

    def __init__(self, grace: float):
        super().__init__(level=logging.CRITICAL)
        self.grace = grace
        self.armed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.armed or not str(record.msg).startswith("Unrecoverable error"):
            return
        import threading

        self.armed = True

        def leave() -> None:
            sys.stderr.write(f"mailer: still here {self.grace:.0f} s after an unrecoverable "
                             f"error; exiting so the supervisor starts a new worker\n")
            sys.stderr.flush()
            os._exit(EX_UNRECOVERABLE)

        timer = threading.Timer(self.grace, leave)
        timer.daemon = True
        timer.start()
        # Celery sometimes does finish its shutdown, but with exit code 0, which the parent
        # takes for a deliberate stop: after this error, any exit asks for a new worker.
        import atexit

        atexit.register(os._exit, EX_UNRECOVERABLE)


def exit_after_unrecoverable_error(grace: float = UNRECOVERABLE_GRACE) -> None:
    """Install the guard on Celery's loggers (call it in the process that runs Celery)."""
    logging.getLogger("celery").addHandler(_ExitAfterUnrecoverable(grace))

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
  a signal that comes while a child is being started is passed on as soon as it is there;
- the child runs in a process group of its own, so a signal to the parent's group (a group
  kill, Ctrl-C in a terminal) reaches the child once, passed on, and not twice: Celery
  takes a second SIGINT for a cold shutdown, and a second SIGTERM that reaches beat while
  it exits kills it with 143 instead of 0. systemd units should say `KillMode=mixed` (the
  stop signal to the parent alone; its final SIGKILL reaches every process of the unit);
  the child asks the kernel for SIGKILL when the parent dies, so a SIGKILL to the parent
  (or its group) still ends the child;
- with a stop grace (beat's: `SCHEDULER_STOP_GRACE`), a child still running that long
  after it was asked to stop is stuck in its shutdown: the parent logs it, sends SIGUSR1
  (beat then writes every thread's stack to its log), and SIGKILL a second later, so
  `mailer beat` always exits. The worker has none: its warm shutdown lasts as long as the
  tasks in hand, which systemd's `TimeoutStopSec` bounds;
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

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("mailer.supervise")

UNRECOVERABLE_GRACE = 10.0
EX_UNRECOVERABLE = 70  # EX_SOFTWARE: not 0, so the parent starts the process again

# `mailer beat` stops in a second; one still there this long after SIGTERM is stuck.
SCHEDULER_STOP_GRACE = 10.0
STACKS_SECONDS = 1.0  # for the stuck child to write its stacks before SIGKILL

MAX_BACKOFF = 30.0
STABLE_SECONDS = 60.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
# Set in the child's environment: the command runs the real process instead of a parent.
CHILD_MARK = "MAILER_SUPERVISED_CHILD"
PARENT_MARK = "MAILER_SUPERVISOR_PID"


def is_child() -> bool:
    return os.environ.get(CHILD_MARK) == "1"


def die_with_parent() -> None:
    """In the child: the kernel sends it SIGKILL when the supervisor dies (prctl
    PR_SET_PDEATHSIG), as a SIGKILL to the supervisor's process group used to reach it too.
    A supervisor already gone by then leaves nothing to run for."""
    die_with(int(os.environ.get(PARENT_MARK) or 0))


def die_with(parent: int) -> None:
    """SIGKILL this process when `parent`, the process that started it, dies; exit at once
    if it is gone already. The supervised worker calls it in the processes Celery forks
    (the embedded scheduler of `mailer worker --beat`, prefork pool processes): they share
    its process group, not the supervisor's, so once the worker is gone nothing else would
    end them."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(EX_UNRECOVERABLE)


def supervise(argv: list[str], what: str, stop_grace: float | None = None) -> int:
    """Run argv as a child until asked to stop; the child's last exit code.

    With `stop_grace`, a child still there that many seconds after a stop signal was passed
    on is asked for its stacks (SIGUSR1) and then killed (see the module docstring)."""
    stopping: list[int] = []
    child: subprocess.Popen | None = None
    told: subprocess.Popen | None = None  # the child a stop signal has been passed on to
    timer: threading.Timer | None = None

    def forward(signum, _frame):
        nonlocal told
        stopping.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)
            told = child
            bound_the_stop()

    def bound_the_stop():
        nonlocal timer
        if stop_grace is not None and timer is None:
            timer = threading.Timer(stop_grace, _kill_after_grace, (told, what, stop_grace))
            timer.daemon = True
            timer.start()

    for signum in FORWARDED:
        signal.signal(signum, forward)
    env = {**os.environ, CHILD_MARK: "1", PARENT_MARK: str(os.getpid())}
    backoff = 1.0
    while True:
        started = time.monotonic()
        # Its own process group: a signal to ours (a group kill, Ctrl-C in a terminal)
        # reaches the child once, passed on by us, rather than twice.
        child = subprocess.Popen(argv, env=env, process_group=0)
        # A signal that came while the child was being started found no child to pass it
        # on to (or the previous one, already gone): pass it on now, once.
        with _signals_blocked():
            if stopping and told is not child:
                child.send_signal(stopping[-1])
                told = child
                bound_the_stop()
        code = _wait(child)
        if timer is not None:
            timer.cancel()
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


@contextlib.contextmanager
def _signals_blocked():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _wait(child: subprocess.Popen) -> int:
    while True:
        try:
            code = child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        # A child killed by a signal reports -N; the shell's convention is 128 + N.
        return 128 - code if code < 0 else code


def _kill_after_grace(child: subprocess.Popen, what: str, grace: float) -> None:
    """In a timer thread: the child was asked to stop `grace` seconds ago and is still
    there. Its stacks go to its log (SIGUSR1), then SIGKILL ends it."""
    for signum in (signal.SIGUSR1, signal.SIGKILL):
        if child.returncode is not None:
            return
        if signum == signal.SIGUSR1:
            log.error("%s is still running %.0f s after it was asked to stop; writing its "
                      "stacks to its log and killing it", what, grace)
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            return
        time.sleep(STACKS_SECONDS)


def main(argv: list[str], what: str, stop_grace: float | None = None) -> None:
    """Exit with the supervised child's code (used by `mailer worker` and `mailer beat`)."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/Supervisor] %(message)s"
    )
    sys.exit(supervise(argv, what, stop_grace))


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

"""In every worker: a heartbeat per process that runs tasks, and the tick when it is its turn.

A prefork worker's children run the tasks, so each child starts a heartbeat thread when it
is forked (worker_process_init), and the parent, which only consumes, runs the tick (so
the tick's work and memory stay out of the sending processes); a threads or solo worker
runs both in its one process. The heartbeat names the process as its claims do
(services.workers); the tick runs the housekeeping steps (sweepers, due schedules) under
the cluster-wide turn, so a deployment without `mailer beat` still recovers a dead
worker's rows and sends owed confirmations.

Two threads, not one: a long tick step (composing a scheduled issue) must not hold back the
heartbeat, or the process would look dead while it works.
"""

from __future__ import annotations

import logging
import threading

from celery import signals

log = logging.getLogger(__name__)

_threads: list[threading.Thread] = []
_stop = threading.Event()


def _every(app, seconds: float, step, what: str) -> threading.Thread:
    def loop():
        with app.app_context():
            while True:
                try:
                    step()
                except Exception:  # noqa: BLE001 - the database may be restarting: next round
                    log.warning("%s failed; trying again in %.0f s", what, seconds, exc_info=True)
                if _stop.wait(seconds):
                    return

    thread = threading.Thread(target=loop, name=f"mailer-{what}", daemon=True)
    thread.start()
    return thread


def _heartbeat() -> None:
    from mailer.clock import utcnow
    from mailer.db import db
    from mailer.services import workers

    with db.transaction() as s:
        workers.heartbeat(s, workers.process_name(), utcnow())


def start(app, *, heartbeat: bool = True, tick: bool = True) -> None:
    """Start the heartbeat and/or the tick in this process (once)."""
    if _threads:
        return
    settings = app.extensions["mailer.settings"]
    from mailer.tasks.base import run_tick

    _stop.clear()
    if heartbeat:
        with app.app_context():
            try:
                _heartbeat()  # before the first task: every claim this process makes has a beat
            except Exception:  # noqa: BLE001
                log.warning("first heartbeat failed", exc_info=True)
        _threads.append(_every(app, settings.worker_heartbeat_seconds, _heartbeat, "heartbeat"))
    if tick and settings.worker_tick:
        _threads.append(_every(app, settings.tick_seconds, run_tick, "tick"))


def stop(app) -> None:
    """Stop the threads and mark this process stopped, so nothing it held waits for a lease."""
    if not _threads:
        return
    _stop.set()
    for thread in _threads:
        thread.join(5)
    _threads.clear()
    from mailer.db import db
    from mailer.services import workers

    with app.app_context():
        try:
            with db.transaction() as s:
                workers.stopped(s, workers.process_name())
        except Exception:  # noqa: BLE001 - the lapse of the heartbeat says the same, later
            log.warning("could not record that this process stops", exc_info=True)


def connect(app) -> None:
    """Wire the threads to the worker's life cycle (called by celery_init_app; a worker
    process builds one app, so the first connection is the one that counts)."""

    @signals.worker_process_init.connect(weak=False, dispatch_uid="mailer-child-started")
    def _child_started(**_):
        # A forked child must not share the parent's database connections.
        from mailer.db import db

        if db.engine is not None:
            db.engine.dispose(close=False)
        _threads.clear()  # the parent's tick thread did not survive the fork
        start(app, tick=False)

    @signals.worker_process_shutdown.connect(weak=False, dispatch_uid="mailer-child-stopping")
    def _child_stopping(**_):
        stop(app)

    @signals.worker_ready.connect(weak=False, dispatch_uid="mailer-worker-ready")
    def _worker_ready(sender=None, **_):
        # Prefork: the children run the tasks and beat; the parent only consumes, and ticks.
        pool = getattr(sender, "pool", None)
        prefork = pool is not None and type(pool).__module__.endswith("prefork")
        start(app, heartbeat=not prefork)

    @signals.worker_shutdown.connect(weak=False, dispatch_uid="mailer-worker-stopping")
    def _worker_stopping(**_):
        stop(app)

"""Celery wired to the Flask app (Flask's documented pattern): tasks run in an app context."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery, Task
from celery.schedules import crontab
from kombu import Queue

from mailer.config import Settings
from mailer.tasks.queues import DEFAULT_QUEUE, HOOKS_QUEUE, SEND_QUEUE


def celery_config(settings: Settings) -> dict:
    conf = {
        "broker_url": settings.broker_url,
        "task_ignore_result": True,
        "result_backend": None,
        # Tasks are idempotent (they re-check state in SQL), so a task redelivered after a
        # worker died is harmless, and acks_late makes sure it is redelivered at all.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A batch that loses the broker connection keeps sending: its claims in SQL, not the
        # broker's ack, protect readers from a second copy.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": DEFAULT_QUEUE,
        # Explicit routing keys: without them both queues bind to the key "celery" and a
        # message meant for one would be copied into both.
        "task_queues": [
            Queue(DEFAULT_QUEUE, routing_key=DEFAULT_QUEUE),
            Queue(SEND_QUEUE, routing_key=SEND_QUEUE),
            Queue(HOOKS_QUEUE, routing_key=HOOKS_QUEUE),
        ],
        "task_routes": {"mailer.send_batch": {"queue": SEND_QUEUE},
                        "mailer.deliver_webhook": {"queue": HOOKS_QUEUE}},
        "broker_connection_retry_on_startup": True,
        # A web request that cannot reach the broker gives up quickly; the sweeper enqueues
        # whatever the request committed but could not hand over.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": {
            "tick": {"task": "mailer.tick", "schedule": timedelta(seconds=settings.tick_seconds)},
            "sync-feeds": {
                "task": "mailer.sync_feeds",
                "schedule": timedelta(minutes=max(settings.feed_sync_minutes, 1)),
            },
            # The daily roll-up of popularity into SQL, a minute after midnight UTC and then
            # hourly: it is idempotent, so a beat that was down at midnight loses nothing.
            "popularity-rollup": {"task": "mailer.popularity_rollup", "schedule": crontab(minute="1")},
        },
        "beat_schedule_filename": str(settings.instance_path / "celerybeat-schedule"),
    }
    if settings.redis_url:
        conf["broker_transport_options"] = {
            "visibility_timeout": 3600,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
    else:
        # Embedded broker: SQLite, polled by the worker; the transport hands these options to
        # SQLAlchemy's create_engine (so the poll's interval cannot go among them:
        # _poll_embedded_broker_often).
        conf["broker_transport_options"] = {"connect_args": {"timeout": 30}}
    return conf


# How often a worker on the embedded broker looks for work.
EMBEDDED_POLL_SECONDS = 0.2


def _poll_embedded_broker_often() -> None:
    """kombu's poll waits its interval whenever the worker's processes are all busy (their
    prefetch is full), not only when the queues are empty: at its default of a second, a
    burst of confirmations or webhook deliveries on the embedded broker went out about two
    a second, whatever the queue held; at a fifth, five times that. Each poll is a small
    SELECT per queue: an idle worker's processes together went from about 1.3 % of a core
    to 3.9 % (6.7 % at a tenth). The transport reads the interval from its class when the
    options do not give one, and its options go to create_engine whole."""
    from kombu.transport import sqlalchemy

    sqlalchemy.Transport.polling_interval = EMBEDDED_POLL_SECONDS


def _pdeathsig_without_cffi() -> None:
    """Each prefork child asks the kernel for SIGKILL when its parent dies (prctl
    PR_SET_PDEATHSIG). billiard does it by parsing a C declaration with cffi in every child,
    which loads pycparser and its parser tables: 6 MB of every sending process's memory.
    The same call through ctypes costs nothing; the behaviour is the same."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    from celery import platforms

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_pdeathsig(sig: int) -> None:
        if libc.prctl(pr_set_pdeathsig, ctypes.c_ulong(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")

    platforms._set_pdeathsig = set_pdeathsig


def celery_init_app(app) -> Celery:
    settings: Settings = app.extensions["mailer.settings"]

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    _pdeathsig_without_cffi()
    if not settings.redis_url:
        _poll_embedded_broker_often()
    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_config(settings))
    celery.set_default()
    app.extensions["celery"] = celery
    import mailer.tasks  # registers the shared tasks on this app
    from mailer.tasks import housekeeping

    housekeeping.connect(app)

    mailer.tasks.base.install_hand_over()
    return celery

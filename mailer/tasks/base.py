"""What every task module shares: the hand-over to the broker, retry policy, the periodic tick."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from uuid import uuid4

from celery import current_app, shared_task
from kombu.exceptions import OperationalError

from mailer.mail.errors import TemporaryFailure
from mailer.services import after_commit

log = logging.getLogger(__name__)

# Retries of a single transactional message stay short (Celery countdowns of minutes at
# most: Redis redelivers long ETAs after its visibility timeout); longer waits are the
# sweepers' business.
RETRY = {
    "autoretry_for": (TemporaryFailure,),
    "retry_backoff": 5,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 5,
}


def enqueue(task, *args, **options) -> bool:
    """Hand a task to the broker after the commit; False (logged) if the broker is down."""
    try:
        if options:
            task.apply_async(args=args, **options)
        else:
            task.delay(*args)
        return True
    except OperationalError as e:
        log.warning("broker unavailable, %s%s left to the sweeper: %s", task.name, args, e)
        return False


# What to do when the broker refuses a task, by task name (called with the task's args).
REFUSED: dict[str, Callable[..., None]] = {}


def hand_over(intent: after_commit.Intent) -> bool:
    """What services asked for after their commit (services.after_commit), to the broker."""
    if enqueue(current_app.tasks[intent.task], *intent.args, **intent.options):
        return True
    if intent.task in REFUSED:
        REFUSED[intent.task](*intent.args)
    return False


def install_hand_over() -> None:
    """Called once the tasks are registered (celery_init_app): commits hand over intents."""
    after_commit.install(hand_over)


# The periodic housekeeping steps, each in its own try so one failing step does not starve
# the others. They run every MAILER_TICK_SECONDS, one process at a time across the
# cluster: in every worker (mailer/tasks/housekeeping.py) and in the `mailer.tick` task
# that beat sends, whichever takes the turn (services.workers.take_turn).
TICK_STEPS: list[Callable[[], object]] = []


def register_tick_step(step: Callable[[], object]) -> Callable[[], object]:
    if step not in TICK_STEPS:
        TICK_STEPS.append(step)
    return step


def run_tick() -> dict | None:
    """The tick's steps if it is this process's turn (None if another process had it)."""
    from mailer.clock import utcnow
    from mailer.db import db
    from mailer.runtime import runtime
    from mailer.services import workers

    every = runtime().settings.tick_seconds
    with db.transaction() as s:
        if not workers.take_turn(s, workers.process_name(), every, utcnow()):
            return None
    done = {}
    for step in TICK_STEPS:
        try:
            done[step.__name__] = step()
        except Exception:  # noqa: BLE001 - logged; the next tick tries again
            log.exception("tick step %s failed", step.__name__)
            done[step.__name__] = "failed"
    return done


@shared_task(name="mailer.tick", acks_late=False)
def tick() -> dict:
    done = run_tick()
    return {"skipped": "another process ran the tick"} if done is None else done


class _Collected:
    """Stands in for kombu's Redis publish batch: keeps the commands instead of sending."""

    def __init__(self):
        self.commands: list[tuple[str, tuple]] = []

    def add(self, name: str, *args) -> None:
        self.commands.append((name, args))


_channels: dict[int, object] = {}


def wire_message(task, *args) -> tuple[str, bytes]:
    """(Redis key, bytes) of the message that `task.delay(*args)` would push: for a caller
    that pushes it itself in a round trip of its own (web.signup_gate).

    Built by Celery and kombu themselves (task protocol 2, kombu's envelope), routed straight
    to the task's queue; only the last step, kombu's LPUSH, is collected instead of sent.
    Needs a Redis broker; the channel is opened once per process (one PING).
    """
    import os

    from celery.utils import uuid
    from kombu.serialization import dumps

    app = task.app
    channel = _channels.get(os.getpid())
    if channel is None:
        connection = app.connection_for_write()
        channel = _channels[os.getpid()] = connection.default_channel
    queue = app.amqp.router.route({}, task.name, args, {})["queue"]
    args = list(args)
    # The repr the worker logs: plain repr() when short, as Celery's own saferepr would
    # give it (which walks the arguments piece by piece, a sizeable part of a signup's CPU).
    shown = repr(args)
    message = app.amqp.as_task_v2(
        uuid(), task.name, args=args, kwargs={}, kwargsrepr="{}",
        argsrepr=shown if len(shown) <= app.amqp.argsrepr_maxsize else None,
    )
    content_type, encoding, body = dumps(message.body, serializer=app.conf.task_serializer)
    properties = {**message.properties, "delivery_mode": 2}
    envelope = channel.prepare_message(
        body, None, content_type, encoding, message.headers, properties
    )
    collected = _Collected()
    channel.basic_publish(envelope, exchange="", routing_key=queue.name, _publish_batch=collected)
    ((command, (key, data)),) = collected.commands
    if command != "lpush":
        raise RuntimeError(f"the broker's transport published with {command!r}, not a list "
                           "push: this Celery or kombu lays out its messages differently")
    return key, data


_templates: dict[tuple[int, str], tuple[str, str, tuple[str, str]]] = {}


def fresh_wire_message(task) -> tuple[str, str]:
    """wire_message(task) for a task without arguments, built by Celery once per process and
    then copied with a new task id and delivery tag: nothing else in such a message changes
    from one call to the next (the body is the empty arguments, the origin this process),
    and building it whole cost a signup about a tenth of its CPU."""
    found = _templates.get((os.getpid(), task.name))
    if found is None:
        key, data = wire_message(task)
        envelope = json.loads(data)
        ids = (envelope["headers"]["id"], envelope["properties"]["delivery_tag"])
        # The copies replace the ids as text: each must be where it is expected and nowhere
        # else, or two messages would share an id (a Celery whose layout changed).
        if not (envelope["headers"]["root_id"] == envelope["properties"]["correlation_id"]
                == ids[0] and data.count(ids[0]) == 3 and data.count(ids[1]) == 1):
            raise RuntimeError(f"a {task.name} message is not laid out as expected, so it "
                               f"cannot be copied with new ids: {data}")
        found = _templates[(os.getpid(), task.name)] = (key, data, ids)
    key, data, (task_id, tag) = found
    return key, data.replace(task_id, str(uuid4())).replace(tag, str(uuid4()))

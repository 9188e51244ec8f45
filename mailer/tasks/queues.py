"""The broker's queues: their names, and how many tasks wait in each (for the dashboard).

Issue sends run on their own `send` queue, so a long send never holds up confirmation mails,
imports and the tick on the default queue; webhook attempts (up to 10 s each against a slow
endpoint) on their own `hooks` queue, so a site can give them workers of their own;
`mailer worker` consumes all three.
"""

from __future__ import annotations

from mailer.config import Settings

DEFAULT_QUEUE = "celery"
SEND_QUEUE = "send"
HOOKS_QUEUE = "hooks"
QUEUES = (DEFAULT_QUEUE, SEND_QUEUE, HOOKS_QUEUE)


def broker_backlog(settings: Settings) -> dict[str, int] | None:
    """Tasks waiting in the broker per queue, or None when the broker cannot be asked;
    `confirmations`: the signups' confirmations waiting on their list for a drain (with
    Redis; the embedded mode queues a task per confirmation)."""
    names = QUEUES
    try:
        if settings.redis_url:
            from mailer import redis_client
            from mailer.tasks.notices import CONFIRMATIONS

            client = redis_client.client(settings.redis_url, timeout=1)
            with client.pipeline(transaction=False) as pipe:
                for name in (*names, CONFIRMATIONS):
                    pipe.llen(name)
                *tasks, confirmations = pipe.execute()
            return {**dict(zip(names, map(int, tasks), strict=True)),
                    "confirmations": int(confirmations)}
        path = settings.instance_path / "broker.sqlite"
        if not path.exists():
            return {**{name: 0 for name in names}, "confirmations": 0}
        # Kombu's SQL transport: one row per message, `visible` until a worker takes it.
        # (sqlite3 imported only here: a worker on Redis and PostgreSQL never needs it.)
        import sqlite3

        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            rows = conn.execute(
                "SELECT q.name, count(*) FROM kombu_message m JOIN kombu_queue q "
                "ON q.id = m.queue_id WHERE m.visible GROUP BY q.name"
            ).fetchall()
        finally:
            conn.close()
        counts = {name: 0 for name in names}
        counts.update({name: n for name, n in rows if name in counts})
        return {**counts, "confirmations": 0}
    except Exception:  # noqa: BLE001 - the dashboard shows "unknown" rather than failing
        return None

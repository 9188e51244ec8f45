"""An issue's progress for the pages and API clients that poll it while it is sent.

deliveries.status counts the issue's deliveries per state: one pass over all its rows,
which for a million readers takes the database a good fraction of a second. The console's
progress page asks every second, and so may any API client; with a few pages open on a
large send, counting alone would keep much of a database core busy for the whole send.

So while an issue is sending, a count is reused until it is STALE_FACTOR times as old as it
took to make: however many watch, counting costs at most about 1/STALE_FACTOR of one
database core per issue. A small issue's count takes milliseconds, so its figures stay
fresh; a million readers' are at most a few seconds old. The issue's own state is read
afresh each time, so a send that ends, or is paused, shows at once; an issue that is not
sending is always counted afresh; and the answers to an action (send, pause, resume,
cancel) do not come from here.

With Redis, one count serves every web process; without it, or while it is unreachable,
each process keeps its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from sqlalchemy.orm import Session

from mailer.models import Issue, IssueStatus
from mailer.redis_client import Degrading
from mailer.services import deliveries

log = logging.getLogger(__name__)

STALE_FACTOR = 10.0
KEY = "mailer-progress/{key}"
TIMEOUT = 0.5  # seconds: a page must not hang on an unreachable Redis

# "issue id/when its send started" -> (when counted, seconds it took, the status): this
# process's counts
_local: dict[str, tuple[float, float, dict]] = {}
_lock = threading.Lock()
# The shared count, or None without it (no Redis configured, or it failed a few seconds
# ago: the count is then made here).
_shared = Degrading("issue progress counted", timeout=TIMEOUT, log=log)


def _fresh(entry, now: float) -> bool:
    counted_at, took, _status = entry
    return now - counted_at < STALE_FACTOR * took


def _shared_get(redis_url: str | None, key: str):
    raw = _shared.run(redis_url, lambda client: client.get(KEY.format(key=key)))
    if raw is None:
        return None
    found = json.loads(raw)
    return found["at"], found["took"], found["status"]


def _shared_put(redis_url: str | None, key: str, entry) -> None:
    counted_at, took, status = entry
    _shared.run(redis_url, lambda client: client.set(
        KEY.format(key=key),
        json.dumps({"at": counted_at, "took": took, "status": status}),
        px=max(1, int(STALE_FACTOR * took * 1000)),
    ))


def watched_status(session: Session, issue_id: int, redis_url: str | None = None) -> dict:
    """deliveries.status(session, issue_id), or a recent enough count of it while the issue
    is sending (see the module's docstring)."""
    issue = session.get(Issue, issue_id)  # read afresh each time: a send that ends shows at once
    if issue is None or issue.status != IssueStatus.SENDING or issue.started_at is None:
        return deliveries.status(session, issue_id)
    key = f"{issue_id}/{issue.started_at.isoformat()}"  # this send of the issue, not an earlier
    now = time.time()
    entry = _local.get(key)
    if entry is None or not _fresh(entry, now):
        entry = _shared_get(redis_url, key)
    if entry is not None and _fresh(entry, now):
        with _lock:  # the web's threads share _local
            _local[key] = entry
        return {**entry[2], "status": str(issue.status), "reason": issue.status_reason}
    started = time.perf_counter()
    status = deliveries.status(session, issue_id)
    entry = (time.time(), time.perf_counter() - started, status)
    with _lock:
        for old in [k for k, e in _local.items() if not _fresh(e, now)]:
            _local.pop(old, None)
        _local[key] = entry
    _shared_put(redis_url, key, entry)
    return status

"""The one way to reach Redis: this process's client, and Redis that degrades when it fails.

client(url, timeout=...) is the process's client for that server and those timeouts, made on
first use. A forked process (a prefork worker of Celery, a gunicorn worker) gets a client of
its own: the cache is keyed by the process id, so no child ever writes on a socket its parent
opened (redis-py's pool resets itself after a fork too, but only a client built in the child
is sure to start clean, whoever built the parent's). script(client, source) is a Lua script
on such a client, made once and reused, that reloads itself after a Redis restart.

Degrading is for the callers that have a local way to do without Redis: the signup's rate
limits (counters in this process), an issue's progress (counted here), article popularity
(a view or a click not counted, a ranking from the days rolled up into SQL). Redis down,
restarting or slow: one warning that names what degrades and for how long, then no attempt
for BACKOFF seconds, so a request pays at most one timeout per BACKOFF instead of one each.
Callers whose failure must raise (a worker's task, retried by Celery: the confirmations'
drain, the popularity roll-up) use client() alone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

BACKOFF = 5.0  # seconds without Redis after it failed

T = TypeVar("T")

_clients: dict[tuple, Any] = {}
_scripts: dict[tuple, Any] = {}
_lock = threading.Lock()


def client(url: str, *, timeout: float, connect_timeout: float | None = None, **options):
    """This process's redis.Redis for `url`, with `timeout` seconds for each reply and to
    connect (`connect_timeout` when that differs), and redis-py's `options`, e.g.
    health_check_interval."""
    if connect_timeout is None:
        connect_timeout = timeout
    key = (os.getpid(), url, timeout, connect_timeout, tuple(sorted(options.items())))
    found = _clients.get(key)
    if found is None:
        with _lock:  # the web's threads: one client, not one each
            found = _clients.get(key)
            if found is None:
                import redis

                found = _clients[key] = redis.Redis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=connect_timeout,
                    **options
                )
    return found


def script(client, source: str):
    """The Lua `source` as a script on `client` (redis-py's Script), made on first use and
    reused. It runs by its SHA1 (EVALSHA: the source crosses the wire once per server) and
    loads itself again when the server has forgotten it (a restart, SCRIPT FLUSH)."""
    key = (client, source)  # a client is hashed by identity; the script keeps it alive
    found = _scripts.get(key)
    if found is None:
        found = _scripts.setdefault(key, client.register_script(source))
    return found


class Degrading:
    """Redis for `what` (as the warning names it: "signup limits", ...), given up for
    `backoff` seconds after any failure; warnings go to the caller's `log`."""

    def __init__(self, what: str, *, timeout: float, log: logging.Logger,
                 backoff: float = BACKOFF, **options):
        self.what = what
        self.timeout = timeout
        self.log = log
        self.backoff = backoff
        self.options = options  # for client(), e.g. health_check_interval
        self._down_until: dict[str, float] = {}  # url -> no attempt before (monotonic)

    def down(self, url: str | None) -> bool:
        """True while the Redis at `url` is left alone after a failure: what run() answers
        now was made without it."""
        return bool(url) and time.monotonic() < self._down_until.get(url, 0.0)

    def run(self, url: str | None, use: Callable[[Any], T]) -> T | None:
        """use(client) on the Redis at `url`; None when there is none (not configured, or it
        failed less than `backoff` seconds ago, or it fails now): the caller does without."""
        if not url or self.down(url):
            return None
        try:
            return use(client(url, timeout=self.timeout, **self.options))
        except Exception as e:  # noqa: BLE001 - any Redis failure: the caller's local way
            self._down_until[url] = time.monotonic() + self.backoff
            self.log.warning("%s without Redis for %.0f s: %s", self.what, self.backoff, e)
            return None

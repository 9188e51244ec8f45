"""The one way to reach Redis: this process's client, and Redis that degrades when it fails.

client(url, timeout=...) is the process's client for that server and those timeouts, made on
first use. A forked process (a prefork worker of Celery, a gunicorn worker) gets a client of
its own: the cache is keyed by the process id, so no child ever writes on a socket its parent
opened (redis-py's pool resets itself after a fork too, but only a client built in the child
is sure to start clean, whoever built the parent's). script(client, source) is a Lua script
on such a client, made once and reused, that reloads itself after a Redis restart.
held(client) is that client's connections held one per thread, for the hot paths (a
signup's two scripts, a drain's takes): a call on a held connection is the command's send
and its reply, without the pool's checkout and the client's retry wrapper around each.

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


class Held:
    """The connections of one client (`held(client)`), one per thread, each taken once and
    kept. A small script's call through the client costs about twice its CPU on a held
    connection (the pool's checkout polls the socket; the retry wrapper and the client's
    bookkeeping run around every command). The same failures raise: a connection the server
    closed (Redis restarted, an idle timeout) is made again and the command sent once more,
    as the client's own retry does; a timeout raises at once (Degrading's callers then do
    without for the back-off)."""

    def __init__(self, client):
        self.client = client
        self._local = threading.local()

    def _connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self.client.connection_pool.make_connection()
        return connection

    def command(self, *args):
        """Send the command `args` on this thread's connection; its reply, decoded as the
        client's settings say (bytes by default)."""
        from redis.exceptions import ConnectionError

        connection = self._connection()
        try:
            return self._once(connection, args)
        except ConnectionError:
            connection.disconnect()
            return self._once(connection, args)

    @staticmethod
    def _once(connection, args):
        connection.send_command(*args, check_health=False)
        return connection.read_response()

    def script(self, script, keys, args):
        """Run `script` (a redis-py Script, as script() makes) with `keys` and `args`: by its
        SHA1, loaded again when the server has forgotten it, as Script's own call does."""
        from redis.exceptions import NoScriptError

        try:
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            sha = self.command("SCRIPT", "LOAD", script.script)
            script.sha = sha.decode() if isinstance(sha, bytes) else sha
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        """Close this thread's connection (the next command opens another)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.disconnect()


_held: dict[Any, Held] = {}


def held(client) -> Held:
    """`client`'s connections held one per thread (Held), made on first use. A client is
    this process's own (client() is per process), so is its Held."""
    found = _held.get(client)
    if found is None:
        with _lock:
            found = _held.setdefault(client, Held(client))
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

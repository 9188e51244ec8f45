"""The signup's one Redis round trip: every rate limit, and the confirmation's hand-off.

A signup checks two limits (per client IP, per address typed; each may have several
windows, "20 per minute;100 per hour") and hands the confirmation mail to a worker. Done
one command at a time that is five or six Redis round trips per request; here it is one
Lua script, run after the signup's SQL statement and before its COMMIT:

1. if any window is full, nothing is counted or queued and the request is refused (the
   caller rolls back and answers 429 with the window's time left);
2. otherwise every window is counted (fixed windows, expiring with the window) and, when a
   confirmation is owed, it is pushed onto the list of confirmations to mail, and the
   task that mails them (its message built by the caller) onto the worker's queue unless
   a task is already draining that list (tasks.notices.CONFIRMATIONS, DRAINING).

The confirmation reaches the list just before the COMMIT, so a worker can take it before
the reader's row is visible; the entry names the request it serves and the task waits for
it (tasks.notices.send_confirmations). The alternative, pushing after the COMMIT, costs a
second round trip on every signup.

Redis down, restarting or slow (timeouts of half a second): limits fall back to counters in
this process for redis_client.BACKOFF seconds, the signup is committed all the same, and
its confirmation, owed in SQL, is sent by the sweeper in every worker (a minute later).
Never a 500. In the embedded mode (no Redis) the counters are in-process and the caller enqueues
through the embedded broker after the commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from mailer import redis_client

log = logging.getLogger(__name__)

TIMEOUT = 0.5  # seconds: a signup must not hang on an unreachable Redis
PREFIX = "mailer-signup"

# KEYS: the windows' counters, then the queue, the confirmations' list and the key that says
# a task is draining it; ARGV: each window's size, then each window's length in
# milliseconds, then the task's message, the confirmation ('' = nothing to queue) and the
# draining key's lifetime in seconds.
SCRIPT = """
local n = #KEYS - 3
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= tonumber(ARGV[i]) then
    return {0, redis.call('PTTL', KEYS[i])}
  end
end
for i = 1, n do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[n + i])
  end
end
local entry = ARGV[2 * n + 2]
if entry ~= '' then
  redis.call('LPUSH', KEYS[n + 2], entry)
  if redis.call('SET', KEYS[n + 3], '1', 'NX', 'EX', ARGV[2 * n + 3]) then
    redis.call('LPUSH', KEYS[n + 1], ARGV[2 * n + 1])
  end
  return {1, 1}
end
return {1, 0}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds, when refused
    queued: bool = False  # the confirmation is on its list (and a task to mail it queued)


@dataclass(frozen=True)
class Handoff:
    """A confirmation for the worker: `entry` goes onto the `entries` list, and `message`
    (the task that drains the list) onto `queue` unless the `draining` key is set."""

    queue: str
    message: bytes
    entries: str
    entry: bytes
    draining: str
    draining_ttl: int


class SignupGate:
    """Rate limits of the signup routes (and the confirmation's hand-off, with Redis)."""

    def __init__(self, redis_url: str | None, limits: dict[str, str]):
        # limits: scope -> "N per minute;M per hour"
        self.limits = {scope: parse_many(text) for scope, text in limits.items()}
        self.redis_url = redis_url
        self._redis = redis_client.Degrading("signup limits", timeout=TIMEOUT, log=log)
        self._memory = FixedWindowRateLimiter(MemoryStorage())

    def _windows(self, idents: dict[str, str]):
        for scope, ident in idents.items():
            for item in self.limits[scope]:
                key = f"{PREFIX}/{scope}/{item.amount}/{item.get_expiry()}/{ident}"
                yield key, item, scope, ident

    def admit(self, idents: dict[str, str], handoff: Handoff | None = None) -> Verdict:
        """Count one request against every window of `idents` (scope -> who); if all allow
        it, hand over the confirmation (`handoff`)."""
        verdict = self._redis.run(self.redis_url,
                                  lambda client: self._admit_redis(client, idents, handoff))
        return verdict if verdict is not None else self._admit_memory(idents)

    def _admit_redis(self, client, idents, handoff: Handoff | None) -> Verdict:
        windows = list(self._windows(idents))
        keys = [key for key, *_ in windows]
        args = [item.amount for _, item, *_ in windows]
        args += [item.get_expiry() * 1000 for _, item, *_ in windows]
        if handoff is None:
            keys += [f"{PREFIX}/no-queue", f"{PREFIX}/no-list", f"{PREFIX}/no-key"]
            args += [b"", b"", 0]
        else:
            keys += [handoff.queue, handoff.entries, handoff.draining]
            args += [handoff.message, handoff.entry, handoff.draining_ttl]
        allowed, extra = redis_client.script(client, SCRIPT)(keys=keys, args=args)
        if not allowed:
            return Verdict(False, retry_after=max(1, -(-int(extra) // 1000)))
        return Verdict(True, queued=bool(extra))

    def _admit_memory(self, idents) -> Verdict:
        windows = list(self._windows(idents))
        for _, item, scope, ident in windows:
            if not self._memory.test(item, scope, ident):
                reset = self._memory.get_window_stats(item, scope, ident).reset_time
                return Verdict(False, retry_after=max(1, int(reset - time.time()) + 1))
        for _, item, scope, ident in windows:
            self._memory.hit(item, scope, ident)
        return Verdict(True)

"""The signup's Redis round trips: every rate limit first, then the confirmation's hand-off.

A signup checks two limits (per client IP, per address typed; each may have several
windows, "20 per minute;100 per hour") and hands the confirmation mail to a worker. Done
one command at a time that is five or six Redis round trips per request; here it is two
Lua scripts:

1. `admit`, before the signup's SQL statement: if any window is full, nothing is counted
   and the request is refused (the caller writes nothing and answers 429 with the window's
   time left); otherwise every window is counted (fixed windows, expiring with the window);
2. `hand_off`, once the statement is committed and only when a confirmation is owed: the
   confirmation is pushed onto the list of confirmations to mail, and the task that mails
   them (its message built by the caller) onto the worker's queue unless a task is already
   draining that list (tasks.notices.CONFIRMATIONS, DRAINING).

The limits come first so that the statement can be its own transaction (autocommit: no
BEGIN, no COMMIT round trips) and a refused signup still writes nothing; the confirmation
comes after it, so a worker never takes one whose request is not committed yet.

Both run on a connection each web thread holds (redis_client.held): about half the
client's CPU per call of the pool's checkout and retry wrapper. Redis down, restarting or
slow (timeouts of half a second): limits fall back to counters in
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

# KEYS: the windows' counters; ARGV: each window's size, then each window's length in
# milliseconds.
LIMITS = """
local n = #KEYS
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
return {1, 0}
"""

# KEYS: the confirmations' list, the key that says a task is draining it, the queue; ARGV:
# the confirmation, the draining key's lifetime in seconds, the task's message.
HANDOFF = """
redis.call('LPUSH', KEYS[1], ARGV[1])
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[3], ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds, when refused


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

    def admit(self, idents: dict[str, str]) -> Verdict:
        """Count one request against every window of `idents` (scope -> who), unless one
        of them is full."""
        verdict = self._redis.run(self.redis_url,
                                  lambda client: self._admit_redis(client, idents))
        return verdict if verdict is not None else self._admit_memory(idents)

    def hand_off(self, handoff: Handoff) -> bool:
        """Push a committed signup's confirmation for the worker; False when Redis did not
        take it (the sweeper sends it: it is owed in SQL)."""
        return self._redis.run(self.redis_url, lambda client: self._hand_off(client, handoff)
                               ) is not None

    def _admit_redis(self, client, idents) -> Verdict:
        windows = list(self._windows(idents))
        keys = [key for key, *_ in windows]
        args = [item.amount for _, item, *_ in windows]
        args += [item.get_expiry() * 1000 for _, item, *_ in windows]
        allowed, pttl = redis_client.held(client).script(
            redis_client.script(client, LIMITS), keys, args)
        if not allowed:
            return Verdict(False, retry_after=max(1, -(-int(pttl) // 1000)))
        return Verdict(True)

    @staticmethod
    def _hand_off(client, handoff: Handoff) -> int:
        return redis_client.held(client).script(
            redis_client.script(client, HANDOFF),
            [handoff.entries, handoff.draining, handoff.queue],
            [handoff.entry, handoff.draining_ttl, handoff.message],
        )

    def _admit_memory(self, idents) -> Verdict:
        windows = list(self._windows(idents))
        for _, item, scope, ident in windows:
            if not self._memory.test(item, scope, ident):
                reset = self._memory.get_window_stats(item, scope, ident).reset_time
                return Verdict(False, retry_after=max(1, int(reset - time.time()) + 1))
        for _, item, scope, ident in windows:
            self._memory.hit(item, scope, ident)
        return Verdict(True)

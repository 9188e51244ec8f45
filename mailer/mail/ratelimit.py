"""MAILER_RATE_LIMIT: one token bucket shared by every worker process and host.

In production the bucket lives in Redis and a Lua script updates it atomically, reading the
clock of the Redis server, so hosts need no synchronized clocks. In the embedded mode (one
host, no Redis) the bucket is a small file under an exclusive lock.

Callers reserve the tokens for a few messages and sleep until the reservation comes due:
the balance may go negative, which queues the callers in arrival order with no polling and
one round trip per reservation. The bucket holds at most 1/20 s of tokens and callers
reserve about 1/50 s at a time, so the flow stays smooth instead of bursting after a pause.
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import time
from pathlib import Path
from typing import Protocol

from mailer import redis_client
from mailer.config import Settings

BURST_SECONDS = 0.05
CHUNK_SECONDS = 0.02

# KEYS[1] bucket; ARGV rate, burst, n. Returns the wait in seconds as a string (a Lua number
# would be truncated to an integer on its way back).
_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
tokens = math.min(burst, tokens + (now - ts) * rate) - n
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 3600)
if tokens >= 0 then
  return '0'
end
return string.format('%.6f', -tokens / rate)
"""


class LimiterUnavailable(Exception):
    """The shared bucket could not be reached for a while: stop sending, try later."""


class Limiter(Protocol):
    rate: float | None

    def chunk(self) -> int:
        """How many messages to reserve at a time."""

    def acquire(self, n: int) -> float:
        """Block until n messages may go; returns the seconds waited."""


class Unlimited:
    rate = None

    def chunk(self) -> int:
        return 1_000_000

    def acquire(self, n: int) -> float:
        return 0.0


class _Bucket:
    def __init__(self, rate: float, sleep=time.sleep):
        self.rate = float(rate)
        self.burst = max(1.0, self.rate * BURST_SECONDS)
        self.sleep = sleep

    def chunk(self) -> int:
        return max(1, min(int(self.burst), math.ceil(self.rate * CHUNK_SECONDS)))

    def acquire(self, n: int) -> float:
        wait = self._reserve(n)
        if wait > 0:
            self.sleep(wait)
        return wait

    def _reserve(self, n: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class RedisBucket(_Bucket):
    """The production limiter; waits out a Redis restart for up to `patience` seconds.

    It holds no connection: each reservation goes through this process's client
    (redis_client.client), so a bucket made before a fork is safe in the child."""

    TIMEOUT = 5.0  # seconds for a reply
    CONNECT_TIMEOUT = 3.0

    def __init__(
        self,
        redis_url: str,
        rate: float,
        key: str = "mailer:ratelimit:send",
        patience: float = 60.0,
        sleep=time.sleep,
    ):
        super().__init__(rate, sleep)
        import redis

        self._errors = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
        self.redis_url = redis_url
        self.key = key
        self.patience = patience

    @property
    def client(self):
        """This process's client for the bucket's Redis."""
        return redis_client.client(self.redis_url, timeout=self.TIMEOUT,
                                   connect_timeout=self.CONNECT_TIMEOUT)

    def _reserve(self, n: int) -> float:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                # The script loads itself again after a Redis restart (redis_client.script).
                script = redis_client.script(self.client, _SCRIPT)
                return float(script(keys=[self.key], args=[self.rate, self.burst, n]))
            except self._errors as e:
                if time.monotonic() > deadline:
                    raise LimiterUnavailable(f"the rate limiter (Redis) is unreachable: {e}") from e
                self.sleep(0.5)


class FileBucket(_Bucket):
    """The embedded mode's limiter: the same bucket in a file, locked with flock."""

    _STATE = struct.Struct("dd")

    def __init__(self, path: Path, rate: float, sleep=time.sleep):
        super().__init__(rate, sleep)
        self.path = Path(path)

    def _reserve(self, n: int) -> float:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, self._STATE.size, 0)
            now = time.time()
            tokens, ts = (
                self._STATE.unpack(raw) if len(raw) == self._STATE.size else (self.burst, now)
            )
            tokens = min(self.burst, tokens + max(0.0, now - ts) * self.rate) - n
            os.pwrite(fd, self._STATE.pack(tokens, now), 0)
        finally:
            os.close(fd)  # closing releases the lock
        return 0.0 if tokens >= 0 else -tokens / self.rate


def limiter_from_settings(settings: Settings) -> Limiter:
    if not settings.rate_limit:
        return Unlimited()
    if settings.redis_url:
        return RedisBucket(settings.redis_url, settings.rate_limit)
    return FileBucket(settings.instance_path / "ratelimit.bucket", settings.rate_limit)

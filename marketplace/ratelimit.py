"""Rate limits and counters in fixed time windows, shared by every API process through Redis.

Each limit is a counter per (subject, window). `acquire` adds an amount only if the counter stays
within the limit, in one atomic step, so parallel calls in any number of processes cannot pass
together a limit that only some of them fit. `adjust` corrects a reservation afterwards, for
example when a call used fewer tokens than it reserved.

Without Redis (the embedded default) the counters live in this process's memory, which is only
correct with a single API process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

WINDOW_S = 60

# KEYS[1]: counter key. ARGV: amount, limit, window in seconds.
# Returns {1, new value} when the amount fits, else {0, current value}.
_ACQUIRE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if current + amount > tonumber(ARGV[2]) then
  return {0, current}
end
local value = redis.call('INCRBY', KEYS[1], amount)
if value == amount then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
end
return {1, value}
"""


@dataclass(frozen=True)
class Reservation:
    """An amount counted against one window; `adjust` must name the same window."""

    key: str
    amount: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reservation: Reservation | None
    retry_after_s: float


class RateLimiter(Protocol):
    async def acquire(self, subject: str, amount: int, limit: int, window_s: int = WINDOW_S) -> Decision: ...

    async def adjust(self, reservation: Reservation, delta: int) -> None: ...

    async def increment(self, subject: str, amount: int, window_s: int) -> int: ...

    async def read(self, subject: str, window_s: int) -> int: ...


def _window(now: float, window_s: int) -> tuple[int, float]:
    start = int(now // window_s) * window_s
    return start, start + window_s - now


class RedisRateLimiter:
    def __init__(self, redis_url: str, prefix: str = "tokenport:rl") -> None:
        import redis.asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(redis_url)
        self._acquire = self._redis.register_script(_ACQUIRE_SCRIPT)
        self.prefix = prefix

    async def acquire(self, subject: str, amount: int, limit: int, window_s: int = WINDOW_S) -> Decision:
        start, retry_after = _window(time.time(), window_s)
        key = f"{self.prefix}:{subject}:{start}"
        allowed, _ = await self._acquire(keys=[key], args=[amount, limit, window_s])
        if not allowed:
            return Decision(False, None, retry_after)
        return Decision(True, Reservation(key, amount), 0.0)

    async def adjust(self, reservation: Reservation, delta: int) -> None:
        if delta:
            await self._redis.incrby(reservation.key, delta)

    async def increment(self, subject: str, amount: int, window_s: int) -> int:
        start, _ = _window(time.time(), window_s)
        key = f"{self.prefix}:{subject}:{start}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, window_s * 2)
            value, _ = await pipe.execute()
        return int(value)

    async def read(self, subject: str, window_s: int) -> int:
        start, _ = _window(time.time(), window_s)
        value = await self._redis.get(f"{self.prefix}:{subject}:{start}")
        return int(value or 0)

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryRateLimiter:
    """The single-process fallback used when no Redis URL is configured."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, subject: str, amount: int, limit: int, window_s: int = WINDOW_S) -> Decision:
        start, retry_after = _window(time.time(), window_s)
        key = f"{subject}:{window_s}:{start}"
        async with self._lock:
            self._drop_old_windows()
            current = self._counters.get(key, 0)
            if current + amount > limit:
                return Decision(False, None, retry_after)
            self._counters[key] = current + amount
        return Decision(True, Reservation(key, amount), 0.0)

    async def adjust(self, reservation: Reservation, delta: int) -> None:
        async with self._lock:
            if reservation.key in self._counters:
                self._counters[reservation.key] += delta

    async def increment(self, subject: str, amount: int, window_s: int) -> int:
        start, _ = _window(time.time(), window_s)
        key = f"{subject}:{window_s}:{start}"
        async with self._lock:
            self._counters[key] = self._counters.get(key, 0) + amount
            return self._counters[key]

    async def read(self, subject: str, window_s: int) -> int:
        start, _ = _window(time.time(), window_s)
        return self._counters.get(f"{subject}:{window_s}:{start}", 0)

    def _drop_old_windows(self) -> None:
        if len(self._counters) < 10_000:
            return
        now = time.time()
        for key in [key for key in self._counters if int(key.rsplit(":", 1)[1]) + 2 * int(key.rsplit(":", 2)[1]) < now]:
            del self._counters[key]

    async def close(self) -> None:
        return None


def create_rate_limiter(redis_url: str | None, key_prefix: str = "tokenport") -> RedisRateLimiter | MemoryRateLimiter:
    return RedisRateLimiter(redis_url, f"{key_prefix}:rl") if redis_url else MemoryRateLimiter()

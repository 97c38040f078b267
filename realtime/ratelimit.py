"""Per-caller rate limits: a token bucket per key, in process (the embedded default) or
shared by every node through Redis (SharedRateLimiter, with REDIS_URL)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from realtime.exceptions import RateLimited

logger = logging.getLogger("realtime.ratelimit")

PRUNE_INTERVAL = 30.0  # seconds between drops of refilled buckets


class MemoryRateLimiter:
    """`rate` requests per second with bursts up to `burst`, per key."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._clock = clock
        # key -> [tokens, last refill time], updated in place (no allocation per request)
        self._buckets: dict[str, list[float]] = {}
        self._next_prune = clock() + PRUNE_INTERVAL

    def like(self, rate: float, burst: int, name: str) -> MemoryRateLimiter:
        """Another limiter of this kind (a package's own rate)."""
        return MemoryRateLimiter(rate, burst, self._clock)

    async def lease(self, key: str, cost: float = 1.0) -> None:
        """Nothing to fetch: every token is here (the shared limiter's interface)."""

    def check(self, key: str, now: float | None = None, cost: float = 1.0) -> None:
        """Take `cost` tokens from `key`'s bucket or raise RateLimited with retry_after.
        `now`, when the caller has just read the clock (`clock`, perf_counter by default)."""
        if now is None:
            now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self._burst, now]
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        bucket[1] = now
        if tokens < cost:
            bucket[0] = tokens
            raise RateLimited((cost - tokens) / self._rate)
        bucket[0] = tokens - cost
        if now >= self._next_prune:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # a bucket that has refilled completely carries no information: drop it
        self._next_prune = now + PRUNE_INTERVAL
        full_after = self._burst / self._rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


# -- shared across the fleet (REDIS_URL) ------------------------------------------------

LEASE_SECONDS = 0.1  # a lease holds at most this much of the key's rate (and the burst)
LEASE_IDLE = 1.0  # leased tokens unused this long are forgotten (never handed back)
FALLBACK_SECONDS = 5.0  # after a Redis failure, the node's own buckets for this long
KEY_PREFIX = "realtime:rate:"

# One token bucket per key in Redis, on Redis's clock. ARGV: rate, burst, wanted, cost.
# Grants `cost` and up to `wanted` tokens at once (a lease, spent locally), or answers
# how long until `cost` would be there. Leased tokens leave the bucket when granted, so
# the fleet together never spends more than one bucket allows.
LEASE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = 0
if tokens >= cost then
  granted = math.max(cost, math.min(wanted, math.floor(tokens)))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
if granted == 0 then
  return {0, tostring((cost - tokens) / rate)}
end
return {1, tostring(granted)}
"""


class LeaseNeeded(Exception):  # control flow, never an answer
    """The node holds no tokens for the key: the caller must `await limiter.lease(...)`
    (off the inline path) and check again."""

    def __init__(self, limiter: SharedRateLimiter) -> None:
        super().__init__()
        self.limiter = limiter


class SharedRateLimiter:
    """The same bucket semantics as MemoryRateLimiter, kept in Redis for every node and
    both doors. The hot path spends leased tokens locally (no Redis call); only when a
    key's lease is spent does a request wait for one Redis call (`lease`). Until
    `attach`, and for FALLBACK_SECONDS after Redis failed or did not answer within its
    timeout, the node's own buckets decide (logged, counted)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        name: str = "caller",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._rate = rate
        self._burst = max(burst, 1)
        self._name = name
        self._clock = clock
        self._local = MemoryRateLimiter(rate, burst, clock)
        self._wanted = max(1, min(self._burst, int(rate * LEASE_SECONDS)))
        # key -> [tokens leased and not spent, forgotten after]
        self._leases: dict[str, list[float]] = {}
        self._redis: Any = None
        self._script: Any = None
        self._timeout = 2.0
        self._down_until = 0.0
        self._on_fallback: Callable[[], None] = lambda: None
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._next_prune = clock() + PRUNE_INTERVAL

    def like(self, rate: float, burst: int, name: str) -> SharedRateLimiter:
        return SharedRateLimiter(rate, burst, name, self._clock)

    def attach(self, redis: Any, timeout: float, on_fallback: Callable[[], None]) -> None:
        from redis.exceptions import RedisError  # (the embedded default never loads redis)

        self._redis, self._timeout, self._on_fallback = redis, timeout, on_fallback
        self._script = redis.register_script(LEASE)
        self._errors = (RedisError, OSError, TimeoutError)

    def detach(self) -> None:
        self._redis = self._script = None
        self._leases.clear()

    def check(self, key: str, now: float | None = None, cost: float = 1.0) -> None:
        """Spend `cost` leased tokens of `key`; LeaseNeeded when there are not enough."""
        if now is None:
            now = self._clock()
        if self._redis is None or now < self._down_until:
            self._local.check(key, now, cost)
            return
        lease = self._leases.get(key)
        if lease is not None and lease[0] >= cost and now < lease[1]:
            lease[0] -= cost
            return
        if now >= self._next_prune:
            self._prune(now)
        raise LeaseNeeded(self)

    async def lease(self, key: str, cost: float = 1.0) -> None:
        """A lease for `key`, or RateLimited with the bucket's wait: one Redis call, which
        the requests of that key arriving meanwhile wait for too."""
        if self._redis is None:
            return
        fetching = self._fetching.get(key)
        if fetching is None:
            fetching = self._fetching[key] = asyncio.ensure_future(self._fetch(key, cost))
            fetching.add_done_callback(lambda done: self._fetched(key, done))
        # shielded: a request cancelled meanwhile must not cancel the others' fetch
        await asyncio.shield(fetching)

    def _fetched(self, key: str, done: asyncio.Future[None]) -> None:
        self._fetching.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here, even if every waiter was cancelled

    async def _fetch(self, key: str, cost: float) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                granted, value = await self._script(
                    keys=[f"{KEY_PREFIX}{self._name}:{key}"],
                    args=[self._rate, self._burst, self._wanted, cost],
                )
        except self._errors as error:
            self._fall_back(error)
            return
        if not int(granted):
            raise RateLimited(float(value))
        lease = self._leases.get(key)
        now = self._clock()
        if lease is not None and now < lease[1]:
            lease[0] += float(value)
            lease[1] = now + LEASE_IDLE
        else:
            self._leases[key] = [float(value), now + LEASE_IDLE]

    def _fall_back(self, error: BaseException) -> None:
        self._down_until = self._clock() + FALLBACK_SECONDS
        self._leases.clear()
        self._on_fallback()
        logger.warning(
            "rate limits: Redis failed (%s); this node's own limits for %.0f s",
            type(error).__name__,
            FALLBACK_SECONDS,
        )

    def _prune(self, now: float) -> None:
        self._next_prune = now + PRUNE_INTERVAL
        self._leases = {k: v for k, v in self._leases.items() if now < v[1]}

"""Per-caller rate limits: a token bucket per key, in process (Redis comes with the bus)."""

from __future__ import annotations

import time
from collections.abc import Callable

from realtime.exceptions import RateLimited

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

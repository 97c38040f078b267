"""Per-caller rate limits: a token bucket per key, in process (Redis comes with the bus)."""

from __future__ import annotations

import time
from collections.abc import Callable

from realtime.exceptions import RateLimited

PRUNE_EVERY = 10_000


class MemoryRateLimiter:
    """`rate` requests per second with bursts up to `burst`, per key."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._clock = clock
        # key -> [tokens, last refill time], updated in place (no allocation per request)
        self._buckets: dict[str, list[float]] = {}
        self._calls = 0

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens from `key`'s bucket or raise RateLimited with retry_after."""
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
        self._calls += 1
        if self._calls % PRUNE_EVERY == 0:
            self._prune(now)

    def _prune(self, now: float) -> None:
        # a bucket that has refilled completely carries no information: drop it
        full_after = self._burst / self._rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}

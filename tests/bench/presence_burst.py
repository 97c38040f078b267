"""Pushed presence under a join burst: N subscribers of one topic, each watching its
presence, all join at once on one hub (Redis or memory); meanwhile a probe measures how
late the event loop wakes up (what an echo request on that node would wait, at least).

    python -m tests.bench.presence_burst [--members 1000] [--redis redis://.../13 | --memory]

The subscribers are in-process stand-ins for sockets (their queue is a counter), so the
socket writes of the ~N*N events are left out. Prints the loop lag's p50/p99/max during
the burst and the three windows after it, and the events delivered. Asserts no timing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from realtime.auth.principal import Principal
from realtime.bus import Backend
from realtime.bus.hub import Hub
from realtime.bus.memory import MemoryBackend
from realtime.bus.presence import WINDOW
from realtime.bus.redis import RedisBackend

TOPIC = "chat.burst"


@dataclass
class Counting:
    id: str
    principal: Principal
    events: int = 0

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        self.events += 1


def _principal(n: int) -> Principal:
    claims = {"sub": f"user{n}", "exp": 0, "name": f"User {n}", "tenant_id": "bench"}
    return Principal.from_claims(claims, client_id="realtime", tenant_claim="tenant_id")


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - before - 0.005) * 1000)


async def _join(hub: Hub, subscriber: Counting, gate: asyncio.Semaphore, watch: bool) -> None:
    # at most the Redis pool's 64 connections at once (more wait on the pool, and past
    # REALTIME_REDIS_TIMEOUT a subscribe is answered UNAVAILABLE, as a server's would be)
    async with gate:
        _, go_live, _ = await hub.subscribe(subscriber, TOPIC, None)
        if watch:
            await hub.watch_presence(subscriber, TOPIC)
    go_live()


async def run(backend: Backend, members: int, watch: bool) -> None:
    hub = Hub(backend, presence_ttl=30)
    await hub.start()
    subscribers = [Counting(f"s{n}", _principal(n)) for n in range(members)]
    lags: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(lags, stop))
    await asyncio.sleep(0.5)
    quiet = len(lags)
    started = time.perf_counter()
    gate = asyncio.Semaphore(60)
    await asyncio.gather(*(_join(hub, s, gate, watch) for s in subscribers))
    joined = time.perf_counter() - started
    await asyncio.sleep(3 * WINDOW + 0.5)
    stop.set()
    await probe
    for subscriber in subscribers:
        hub.drop(subscriber)
    await asyncio.sleep(2)  # the presence entries are removed in the background
    await hub.stop(2)
    await backend.close()
    during = sorted(lags[quiet:])
    p99 = during[int(len(during) * 0.99) - 1]
    events = sum(s.events for s in subscribers)
    print(
        f"{members} joined in {joined * 1000:.0f} ms; loop lag during the burst and after: "
        f"p50 {statistics.median(during):.2f} ms, p99 {p99:.2f} ms, max {during[-1]:.1f} ms; "
        f"{events} presence events ({members * (members - 1)} at most)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.presence_burst")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument(
        "--no-watch", action="store_true", help="the same burst, no presence events"
    )
    options = parser.parse_args()
    backend: Backend = (
        MemoryBackend(1000)
        if options.memory
        else RedisBackend(options.redis, retention=1000, ttl=3600, presence_ttl=30, timeout=2)
    )
    asyncio.run(run(backend, options.members, not options.no_watch))


if __name__ == "__main__":
    main()

"""`publish_user` to a user with a socket on each of two nodes, on Redis: the latency from
the publish call to the event in each node's subscriber queue, at a fixed rate.

    python -m tests.bench.personal [--rate 1000] [--seconds 10] [--redis redis://.../13]

Two hubs in this process stand for the two nodes (each with its own Redis connections
and its own reader task, as two `realtime serve` processes have); the "sockets" are
subscribers that stamp the time each event is queued to them. What this leaves out is
the socket write itself (the outbox's, measured by the fan-out benchmark). Nothing here
asserts a timing: it prints p50/p99/max per node.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

import orjson

from realtime.auth.principal import Principal
from realtime.bus.hub import EventFrame, Hub
from realtime.bus.redis import RedisBackend
from realtime.protocol import personal_topic


@dataclass
class Stamping:
    """A subscriber (what the hub needs of a socket) that records when events arrive."""

    id: str
    principal: Principal | None = None
    arrived: dict[int, float] = field(default_factory=dict)

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        if isinstance(message, EventFrame):
            self.arrived[orjson.loads(message.event.data)["n"]] = time.perf_counter()


def _hub(url: str) -> Hub:
    backend = RedisBackend(url, retention=1000, ttl=3600, presence_ttl=30, timeout=2)
    return Hub(backend, presence_ttl=30)


async def run(url: str, rate: int, seconds: float) -> dict[str, list[float]]:
    nodes = [_hub(url), _hub(url)]
    sockets = [Stamping(f"socket-{n}") for n in range(2)]
    topic = personal_topic("bench", "alice")
    for hub, socket in zip(nodes, sockets, strict=True):
        await hub.start()
        _, go_live, _ = await hub.subscribe(socket, topic, None, pinned=True)
        go_live()
    # no warm-up: the node's first second is measured too (a wake sent before the
    # reader's first XREAD used to be missed, and those events waited out a 1 s block)
    sent: dict[int, float] = {}
    total = int(rate * seconds)
    start = time.perf_counter()
    for n in range(total):
        # paced from the start, so a slow publish does not lower the rate that follows
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[n] = time.perf_counter()
        await nodes[n % 2].publish_user("alice", "note", {"n": n}, tenant="bench")
    await asyncio.sleep(1.0)  # the last ones are read
    for hub in nodes:
        await hub.stop(2)
        await hub.backend.close()
    return {
        socket.id: [(socket.arrived[n] - sent[n]) * 1000 for n in sent if n in socket.arrived]
        for socket in sockets
    } | {"lost": [float(total * 2 - sum(len(s.arrived) for s in sockets))]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.personal")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    options = parser.parse_args()
    found = asyncio.run(run(options.redis, options.rate, options.seconds))
    lost = int(found.pop("lost")[0])
    for node, latencies in found.items():
        ordered = sorted(latencies)
        p99 = ordered[int(len(ordered) * 0.99) - 1]
        print(
            f"{node}: {len(ordered)} events, p50 {statistics.median(ordered):.2f} ms, "
            f"p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms"
        )
    print(f"lost: {lost}")


if __name__ == "__main__":
    main()

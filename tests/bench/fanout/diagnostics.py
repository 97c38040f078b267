"""Diagnostic patches of realtime for the fan-out bench: `--patch hub-batch`.

Like tests/bench/ablations.py: each monkeypatches realtime inside the bench server process
only (the runner passes the list in `BENCH_FANOUT_PATCH`), so the gain over an unpatched
run shows what the patched piece costs. They change behaviour and lean on realtime's
internals of the day (a renamed attribute makes the server fail at start, loudly):
numbers to find where the time goes, never a configuration to ship. realtime/ itself is
not modified.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

ENV = "BENCH_FANOUT_PATCH"


def _hub_batch() -> None:
    """`Hub._read_loop` delivers every event of one read, then yields once (not per event).

    A subscriber's writer then wakes once per read and writes all its new frames in one
    flush, instead of once per event. Drops the outage handling of the real loop.
    """
    from realtime import hub

    async def read_loop(self: hub.Hub) -> None:
        while True:
            events = await self.backend.read(dict(self._positions), hub.BLOCK)
            for event in events:
                await self._deliver(event)
            await asyncio.sleep(0)

    hub.Hub._read_loop = read_loop  # type: ignore[method-assign]


def _gc_off() -> None:
    """No garbage collection at all in the server (reference counting only): whether the
    collector's pauses make the latency tail."""
    import gc

    gc.disable()


def _hub_lag() -> None:
    """Per publication, in the node that publishes: (t, entering Hub.publish, its XADD
    answered); in the node that delivers: (t, entering Hub._deliver, fan-out done). `t` is
    the publisher's perf_counter_ns, CLOCK_MONOTONIC on Linux like ours. Appended every
    1,000 rows to /tmp/realtime-hub-lag-<pid>-{publish,deliver}.txt (EXPERIMENT: where
    the cross-node tail comes from)."""
    import os
    import time
    from typing import Any

    import orjson

    from realtime import hub

    deliver, publish = hub.Hub._deliver, hub.Hub.publish
    rows: dict[str, list[tuple[int, int, int]]] = {"publish": [], "deliver": []}

    def note(kind: str, t: Any, started: int) -> None:
        if isinstance(t, int):
            rows[kind].append((t, started, time.perf_counter_ns()))
            if len(rows[kind]) >= 1000:
                with open(f"/tmp/realtime-hub-lag-{os.getpid()}-{kind}.txt", "a") as out:
                    out.writelines(f"{t} {a} {b}\n" for t, a, b in rows[kind])
                rows[kind].clear()

    async def timed_deliver(self: hub.Hub, event: hub.Event) -> None:
        started = time.perf_counter_ns()
        await deliver(self, event)
        note("deliver", orjson.loads(event.data).get("t"), started)

    async def timed_publish(self: hub.Hub, topic: str, data: Any, event: str = "message") -> Any:
        started = time.perf_counter_ns()
        offset = await publish(self, topic, data, event)
        note("publish", data.get("t") if isinstance(data, dict) else None, started)
        return offset

    hub.Hub._deliver = timed_deliver  # type: ignore[method-assign]
    hub.Hub.publish = timed_publish  # type: ignore[method-assign]

    import gc

    collecting: list[int] = []

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[:] = [time.perf_counter_ns()]
        elif collecting and info["generation"] >= 1:
            now = time.perf_counter_ns()
            with open(f"/tmp/realtime-hub-lag-{os.getpid()}-gc.txt", "a") as out:
                out.write(f"{info['generation']} {collecting[0]} {now} {info['collected']}\n")

    gc.callbacks.append(on_gc)


# (`direct-send` was removed once Connection.enqueue wrote pushes at once itself)
PATCHES: dict[str, Callable[[], None]] = {
    "hub-batch": _hub_batch,
    "gc-off": _gc_off,
    "hub-lag": _hub_lag,
}


def parse(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PATCHES]
    if unknown:
        raise ValueError(f"unknown patches {unknown}; known: {sorted(PATCHES)}")
    return names


def apply(value: str) -> list[str]:
    names = parse(value)
    for name in names:
        PATCHES[name]()
    return names

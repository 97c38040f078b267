"""Diagnostic patches of realtime for the fan-out bench: `--patch hub-batch`.

Each replaces a piece of realtime inside the bench server process only (the runner passes
the list in `BENCH_FANOUT_PATCH`), so the gain over an unpatched run shows what the
patched piece costs. There is no seam of `create_app` for the hub's internals, so they
patch `realtime.bus.hub.Hub` by name, through `_patch`/`_require`: every name a patch
replaces or leans on (methods, module constants, attributes set in `Hub.__init__`) is
checked when the server starts, and one that is missing (renamed, moved) stops the
server with an error naming it. A diagnostic is never silently switched off. (`gc-off`
is a process setting.) They change behaviour: numbers to find where the time goes, never
a configuration to ship. realtime/ itself is not modified.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

ENV = "BENCH_FANOUT_PATCH"
HUB = "realtime.bus.hub"


class PatchTargetMissing(RuntimeError):
    """What a diagnostic patches or uses is not in realtime (any more)."""


def _require(module: str, owner: str | None = None, *names: str, init: tuple[str, ...] = ()) -> Any:
    """`module` (or its `owner` class) with every one of `names`, and with `init`
    assigned as `self.<name>` in the class's `__init__`; PatchTargetMissing otherwise."""
    try:
        found: Any = importlib.import_module(module)
    except ImportError as error:
        raise PatchTargetMissing(f"diagnostics: cannot import {module}: {error}") from None
    where = module
    if owner is not None:
        if not hasattr(found, owner):
            raise PatchTargetMissing(f"diagnostics: {module}.{owner} does not exist")
        found, where = getattr(found, owner), f"{module}.{owner}"
    missing = [name for name in names if not hasattr(found, name)]
    if init:
        source = inspect.getsource(found.__init__)
        assigned = set(re.findall(r"self\.(\w+)\s*(?::[^=\n]*)?=", source))
        missing += [f"self.{name} (in __init__)" for name in init if name not in assigned]
    if missing:
        raise PatchTargetMissing(
            f"diagnostics: {where} has no {', '.join(missing)}; update "
            "tests/bench/fanout/diagnostics.py to realtime's new names"
        )
    return found


def _parameters(function: Any, *names: str) -> None:
    """`function` takes parameters `names` (PatchTargetMissing otherwise)."""
    known = inspect.signature(function).parameters
    missing = [name for name in names if name not in known]
    if missing:
        raise PatchTargetMissing(
            f"diagnostics: {function.__qualname__} takes no {', '.join(missing)} any more"
        )


def _hub_batch() -> None:
    """`Hub._read_loop` delivers every event of one read, then yields once (the real loop
    yields every `YIELD_EVERY` events).

    A subscriber's writer then wakes once per read and writes all its new frames in one
    flush. Drops the outage handling of the real loop.
    """
    hub = _require(HUB, None, "BLOCK")
    Hub = _require(HUB, "Hub", "_read_loop", "_deliver", init=("backend", "_positions"))

    async def read_loop(self: Any) -> None:
        while True:
            events = await self.backend.read(dict(self._positions), hub.BLOCK)
            for event in events:
                await self._deliver(event)
            await asyncio.sleep(0)

    Hub._read_loop = read_loop


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

    import orjson

    _require("realtime.bus", "Event", "data")  # what `_deliver` is given
    Hub = _require(HUB, "Hub", "_deliver", "publish")
    _parameters(Hub.publish, "topic", "data")
    deliver, publish = Hub._deliver, Hub.publish
    rows: dict[str, list[tuple[int, int, int]]] = {"publish": [], "deliver": []}

    def note(kind: str, t: Any, started: int) -> None:
        if isinstance(t, int):
            rows[kind].append((t, started, time.perf_counter_ns()))
            if len(rows[kind]) >= 1000:
                with open(f"/tmp/realtime-hub-lag-{os.getpid()}-{kind}.txt", "a") as out:
                    out.writelines(f"{t} {a} {b}\n" for t, a, b in rows[kind])
                rows[kind].clear()

    async def timed_deliver(self: Any, event: Any) -> None:
        started = time.perf_counter_ns()
        await deliver(self, event)
        note("deliver", orjson.loads(event.data).get("t"), started)

    async def timed_publish(self: Any, topic: str, data: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        offset = await publish(self, topic, data, *args, **kwargs)
        note("publish", data.get("t") if isinstance(data, dict) else None, started)
        return offset

    Hub._deliver = timed_deliver
    Hub.publish = timed_publish

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

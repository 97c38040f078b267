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


# (`direct-send` was removed once Connection.enqueue wrote pushes at once itself)
PATCHES: dict[str, Callable[[], None]] = {"hub-batch": _hub_batch}


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

"""Diagnostic patches of realtime for the fan-out bench: `--patch hub-batch,direct-send`.

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


def _direct_send() -> None:
    """`Connection.enqueue` writes at once when the socket's queue is empty and no flush
    runs, skipping the writer task's wake-up (valid while uvicorn's send does not suspend:
    the transport is not paused; raises if it ever does)."""
    from realtime.connection import Connection, State

    enqueue = Connection.enqueue

    def direct(self: Connection, message: bytes, wake: bool = True) -> None:
        if wake and self.state is State.OPEN and not self._outbox and not self._writing:
            send = self.websocket.send({"type": "websocket.send", "text": message.decode()})
            try:
                send.send(None)
            except StopIteration:
                return
            except (OSError, RuntimeError):
                return  # the peer is gone
            send.close()
            raise RuntimeError("direct-send: the send suspended; this diagnostic cannot go on")
        enqueue(self, message, wake)

    Connection.enqueue = direct  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {"hub-batch": _hub_batch, "direct-send": _direct_send}


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

"""The embedded bus's history holds what it was given, not the buffer orjson grew into:
orjson's `dumps` output keeps its over-allocated buffer (4 KiB for `{"n": 1}`, ~250 KiB
for 30 KB), so a topic's `retention` events held ~8x their size (the soak bench: RSS
125 -> 320 MiB after a 30 KB flood on `broadcast`, all of it live)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from realtime.bus.hub import Hub
from realtime.bus.memory import MemoryBackend

pytestmark = pytest.mark.anyio

RETENTION = 200
PAD = 30_000


async def retained_bytes(data: object) -> tuple[int, int]:
    """Memory the hub's history still holds after `RETENTION` publications of `data`,
    and the size of their JSON."""
    backend = MemoryBackend(RETENTION)
    hub = Hub(backend, presence_ttl=30.0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(RETENTION):
            await hub.publish("broadcast", data)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    history = await backend.history("broadcast", None)
    assert history.top.seq == RETENTION
    return held, sum(len(event.data) for event in backend._topics["broadcast"].events)


async def test_a_flood_of_large_messages_holds_their_size() -> None:
    held, size = await retained_bytes({"pad": "x" * PAD})
    assert size >= RETENTION * PAD
    assert held < size * 1.2  # before: ~8.6x (orjson's 256 KiB buffers)


async def test_small_messages_hold_their_size() -> None:
    held, size = await retained_bytes({"n": 1})
    # an Event and its bytes header each, but not a 4 KiB buffer (before: ~800 KiB)
    assert held < RETENTION * 400
    assert size == RETENTION * len(b'{"n":1}')

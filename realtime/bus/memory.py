"""The in-process bus of the embedded default: one process, the same contract."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
import time
from typing import Any

from realtime.bus import ANY_EPOCH, Backend, Event, History, Offset


class _Topic:
    def __init__(self, retention: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.events: collections.deque[Event] = collections.deque(maxlen=retention)
        # idempotency keys of publications -> their seq; as many as the history keeps
        self.keys: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.touched = time.monotonic()


class MemoryBackend(Backend):
    """`memory://`: everything in this instance, shared with no other process. A new
    instance (a restarted server) starts every topic in a new epoch, as a Redis that
    restarted empty does. A topic nobody published to, read or subscribed to for `ttl`
    seconds is forgotten, as Redis expires an idle stream (REALTIME_STREAM_TTL): without
    it every user's personal channel stayed in memory for the life of the process."""

    def __init__(self, retention: int, ttl: float = 86400.0) -> None:
        self._retention = retention
        self._ttl = ttl
        self._swept = time.monotonic()
        self._topics: dict[str, _Topic] = {}
        self._changed = asyncio.Event()
        self._presence: dict[str, dict[str, dict[str, Any]]] = {}

    def _topic(self, name: str) -> _Topic:
        state = self._topics.get(name)
        if state is None:
            self._sweep()
            state = self._topics[name] = _Topic(self._retention)
        else:
            state.touched = time.monotonic()
        return state

    def _sweep(self) -> None:
        """Forget the topics idle for `ttl`; at most once per min(ttl, 60 s), when a new
        topic is made (what grows the map), so the cost is one pass per interval."""
        now = time.monotonic()
        if now - self._swept < min(self._ttl, 60.0):
            return
        self._swept = now
        idle = [name for name, state in self._topics.items() if now - state.touched > self._ttl]
        for name in idle:
            del self._topics[name]

    async def publish(
        self,
        topic: str,
        data: bytes,
        name: bytes = b"message",
        key: str | None = None,
        unless: str | None = None,
    ) -> Offset:
        state = self._topic(topic)
        if key is not None and key in state.keys:
            return Offset(state.epoch, state.keys[key])  # a retry: nothing appended
        state.seq += 1
        # an exact-size copy: orjson's output keeps the buffer it grew into (4 KiB for a
        # tiny payload, ~250 KiB for 30 KB), and the history keeps `retention` of them
        # per topic (a 30 KB flood held ~250 MiB instead of ~30 MiB); the copy is a memcpy
        state.events.append(
            Event(topic, state.seq, bytes(memoryview(data)), name, unless, time.time())
        )
        if key is not None:
            state.keys[key] = state.seq
            if len(state.keys) > self._retention:
                state.keys.popitem(last=False)
        self._changed.set()
        return Offset(state.epoch, state.seq)

    async def history(self, topic: str, since: Offset | None) -> History:
        state = self._topic(topic)
        top = Offset(state.epoch, state.seq)
        if since is None:
            return History(top, recovered=False)
        oldest = state.events[0].seq if state.events else state.seq + 1
        if since.epoch == ANY_EPOCH:
            since = Offset(state.epoch, since.seq)
        if since.epoch != state.epoch or since.seq > state.seq or since.seq + 1 < oldest:
            return History(top, recovered=False)
        return History(top, True, [e for e in state.events if e.seq > since.seq])

    async def page(
        self, topic: str, cursor: int | None, limit: int, reverse: bool
    ) -> tuple[Offset, list[Event]]:
        state = self._topic(topic)
        if reverse:
            below = state.seq + 1 if cursor is None else cursor
            found = itertools.islice((e for e in reversed(state.events) if e.seq < below), limit)
        else:
            above = 0 if cursor is None else cursor
            found = itertools.islice((e for e in state.events if e.seq > above), limit)
        return Offset(state.epoch, state.seq), list(found)

    async def read(self, positions: dict[str, int], block: float) -> list[Event]:
        events = self._after(positions)
        # A change since the last read (a wake included) ends this read at once: it may
        # be a topic subscribed after the caller computed its positions.
        if not events and not self._changed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block):
                    await self._changed.wait()
            events = self._after(positions)
        self._changed.clear()
        return events

    def _after(self, positions: dict[str, int]) -> list[Event]:
        found: list[Event] = []
        now = time.monotonic()
        for topic, seq in positions.items():
            state = self._topics.get(topic)
            if state is None:
                continue
            state.touched = now  # subscribed on this node: never idle
            if state.seq > seq:
                found.extend(_newer(state.events, seq))
        return found

    async def epoch(self, topic: str) -> str | None:
        state = self._topics.get(topic)
        return state.epoch if state else None

    async def wake(self) -> None:
        self._changed.set()

    async def presence_set(self, topic: str, member: str, info: dict[str, Any]) -> None:
        self._presence.setdefault(topic, {})[member] = info

    async def presence_remove(self, topic: str, member: str) -> None:
        self._presence.get(topic, {}).pop(member, None)

    async def presence_list(self, topic: str) -> list[dict[str, Any]]:
        return list(self._presence.get(topic, {}).values())

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._changed.set()


def _newer(events: collections.deque[Event], seq: int) -> list[Event]:
    """Events after `seq`, walking back from the newest (the usual case is one or two)."""
    newer: list[Event] = []
    for event in reversed(events):
        if event.seq <= seq:
            break
        newer.append(event)
    newer.reverse()
    return newer

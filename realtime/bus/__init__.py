"""The bus: topics with history, resume from an offset, presence.

A backend is a small contract (publish, history, read, presence, ping, close) with an
in-process twin and a Redis-streams engine, chosen by REDIS_URL. One `Hub` per node reads
every stream its local sockets subscribe to and fans each event out as the same bytes.

Offsets are `<epoch>:<seq>`: `seq` counts publications on the topic (1, 2, ...), and the
epoch changes when the topic's stream is reset (Redis restarted empty, or the topic
expired), so a stale offset is detected and answered `recovered: false`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

ANY_EPOCH = "*"


@dataclass(frozen=True, slots=True)
class Offset:
    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.seq}"

    @classmethod
    def start(cls) -> Offset:
        """Before the first event of whatever epoch the topic is in."""
        return cls(ANY_EPOCH, 0)

    @classmethod
    def parse(cls, text: str) -> Offset | None:
        epoch, _, seq = text.rpartition(":")
        if not epoch or not seq.isdigit():
            return None
        return cls(epoch, int(seq))


@dataclass(frozen=True, slots=True)
class Event:
    """One publication: `data` is its JSON, serialized once by the publisher."""

    topic: str
    seq: int
    data: bytes
    name: bytes = b"message"  # the event name clients see ("message", "job.progress", ...)


@dataclass(slots=True)
class History:
    top: Offset
    recovered: bool
    events: list[Event] = field(default_factory=list)


class BusUnavailable(Exception):
    """The backend cannot be reached; callers answer UNAVAILABLE."""


class BusOutcomeUnknown(BusUnavailable):
    """A publication was sent and its answer did not come in time: it may have been
    published. An outage for everything but the answer to the publisher."""


class Backend(abc.ABC):
    @abc.abstractmethod
    async def publish(
        self, topic: str, data: bytes, name: bytes = b"message", key: str | None = None
    ) -> Offset:
        """Append to the topic; returns the publication's offset. With an idempotency
        `key` already used on this topic (and still remembered), append nothing and
        return the offset of the publication that key made."""

    @abc.abstractmethod
    async def history(self, topic: str, since: Offset | None) -> History:
        """The topic's top offset and, when `since` is given and still retained in the same
        epoch, every event after it (recovered); else no events and recovered=False.
        `since` with epoch `*` means "whatever the epoch": the whole retained history."""

    @abc.abstractmethod
    async def read(self, positions: dict[str, int], block: float) -> list[Event]:
        """Events with seq greater than each topic's position, waiting up to `block` s."""

    @abc.abstractmethod
    async def epoch(self, topic: str) -> str | None:
        """The topic's current epoch, None if it has no stream."""

    @abc.abstractmethod
    async def wake(self) -> None:
        """Make a blocked `read` return now (the set of topics changed)."""

    @abc.abstractmethod
    async def presence_set(self, topic: str, member: str, info: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def presence_remove(self, topic: str, member: str) -> None: ...

    @abc.abstractmethod
    async def presence_list(self, topic: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def ping(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

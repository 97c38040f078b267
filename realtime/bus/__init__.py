"""The bus: topics with history, resume from an offset, presence.

A backend is a small contract (`Backend`: publish, history, page, read, epoch, wake,
presence, ping, close) with an in-process twin and a Redis-streams engine, chosen by the URL scheme
of `Settings.bus_url` (`from_url`). One `Hub` per node reads every stream its local
sockets subscribe to and fans each event out as the same bytes. A new backend is a
subclass of `Backend`, a scheme in `from_url`, and a factory in tests/test_bus_contract.py,
whose tests say what it must do.

Offsets are `<epoch>:<seq>`: `seq` counts publications on the topic (1, 2, ...), and the
epoch changes when the topic's stream is reset (Redis restarted empty, or the topic
expired), so a stale offset is detected and answered `recovered: false`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from realtime.exceptions import ConfigError

if TYPE_CHECKING:
    from realtime.settings import Settings

ANY_EPOCH = "*"
MEMORY_SCHEME = "memory"
REDIS_SCHEMES = ("redis", "rediss", "unix")  # redis-py's: TCP, TLS, a socket path
SCHEMES = (MEMORY_SCHEME, *REDIS_SCHEMES)  # what from_url serves


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
    # a topic whose subscribers already got this event another way: a socket subscribed
    # to it is not sent this one (the owner's job.done on the personal channel, when that
    # socket watches the job)
    unless: str | None = None
    # when it was published (Unix seconds, the publishing node's clock); 0.0 unknown:
    # the hub's publish-to-deliver lag metric
    at: float = 0.0


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
    """What the hub needs of a bus. Every method but `ping` and `close` raises
    `BusUnavailable` when the backend cannot be reached (a `publish` sent and unanswered:
    `BusOutcomeUnknown`). tests/test_bus_contract.py runs the same tests over every
    backend."""

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        data: bytes,
        name: bytes = b"message",
        key: str | None = None,
        unless: str | None = None,
    ) -> Offset:
        """Append one event (`data`, `name` and `unless` kept as given, `at` the time of
        the call) to the topic and return its offset: the topic's current epoch and the
        previous seq plus one (1 for the first publication of an epoch). At least the
        newest `retention` events stay retained. With an idempotency `key` the topic saw
        recently (at least: fewer than `retention` publications ago and within the stream
        TTL), append nothing and return the offset that key's publication got."""

    @abc.abstractmethod
    async def history(self, topic: str, since: Offset | None) -> History:
        """The topic's top (current epoch, seq of its last event; 0 when it has none) and,
        when `since` is in that epoch (or `ANY_EPOCH`, "whatever the epoch"), not past the
        top, and every event after it is still retained: exactly those events, in order,
        with recovered=True. Otherwise (`since` None, another epoch, trimmed) no events and
        recovered=False. An empty topic gets its epoch here, and its first publication
        keeps it, so an offset handed out before anything was published resumes."""

    @abc.abstractmethod
    async def page(
        self, topic: str, cursor: int | None, limit: int, reverse: bool
    ) -> tuple[Offset, list[Event]]:
        """The topic's top (as `history` answers it, giving an empty topic its epoch) and
        at most `limit` retained events, read together: forward (`reverse` False) those
        whose seq is greater than `cursor` (None: from the oldest retained), oldest first;
        backward those whose seq is less than `cursor` (None: from the newest), newest
        first. Whatever the epoch: the caller compares its own with the top's."""

    @abc.abstractmethod
    async def read(self, positions: dict[str, int], block: float) -> list[Event]:
        """Events of the topics in `positions` whose seq is greater than the topic's
        position, in seq order per topic; when there are none yet, wait for some at most
        `block` seconds, then return what came ([] if nothing). May return a batch only
        (the caller reads again from the new positions), and may skip events trimmed
        meanwhile (the caller sees the gap in the seqs)."""

    @abc.abstractmethod
    async def epoch(self, topic: str) -> str | None:
        """The topic's current epoch, without creating one: None when the topic has no
        stream (nothing published or read since it was reset)."""

    @abc.abstractmethod
    async def wake(self) -> None:
        """Make a `read` of this instance that is blocked now return soon (the hub changed
        the set of topics it reads), with whatever it has, maybe nothing."""

    @abc.abstractmethod
    async def presence_set(self, topic: str, member: str, info: dict[str, Any]) -> None:
        """Add or refresh `member` on the topic with `info` (a JSON object). An entry
        not refreshed within the presence TTL may be dropped (its node died)."""

    async def presence_set_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        """`presence_set` of each (topic, member, info): the hub's refresh of all its
        entries. A backend may write them together."""
        for topic, member, info in entries:
            await self.presence_set(topic, member, info)

    @abc.abstractmethod
    async def presence_remove(self, topic: str, member: str) -> None:
        """Remove `member` from the topic; nothing happens if it is not there."""

    @abc.abstractmethod
    async def presence_list(self, topic: str) -> list[dict[str, Any]]:
        """The `info` of every member present on the topic, in no particular order."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers (within its timeout); False, never an error."""

    def failures(self) -> Mapping[str, int]:
        """How many calls failed (could not reach the backend, or timed out), by
        operation (`publish`, `read`, ...), since the backend was made: the metrics read
        it at a scrape. A backend in process memory cannot fail: nothing."""
        return {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's connections; no other call follows (the hub has stopped
        reading)."""


def scheme(url: str, what: str = "the bus", known: Sequence[str] = SCHEMES) -> str:
    """The scheme of `url` when it is one of `known`, else a ConfigError naming them.
    Only the scheme is quoted: the rest of the URL may hold a password."""
    found = url.partition("://")[0] if "://" in url else ""
    if found not in known:
        problem = f"unknown URL scheme {found + '://'!r}" if found else "no scheme in the URL"
        expected = ", ".join(f"{name}://" for name in known)
        raise ConfigError(f"{problem} for {what}: expected one of {expected}")
    return found


def in_process(url: str) -> bool:
    """Does `url` name a bus held in this process's memory (shared with no other)?"""
    return scheme(url) == MEMORY_SCHEME


def from_url(url: str, settings: Settings) -> Backend:
    """The backend `url` names, configured by `settings`. A backend's module (and the
    client library it needs) is imported only for its own schemes."""
    if scheme(url) == MEMORY_SCHEME:
        from realtime.bus.memory import MemoryBackend

        return MemoryBackend(settings.stream_retention, ttl=settings.stream_ttl)
    from realtime.bus.redis import RedisBackend

    return RedisBackend(
        url,
        retention=settings.stream_retention,
        ttl=settings.stream_ttl,
        presence_ttl=settings.presence_ttl,
        timeout=settings.redis_timeout,
    )

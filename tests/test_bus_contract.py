"""The bus contract (realtime.bus.Backend): one set of tests run over every backend
factory, so a new backend passes or fails the same ones. A factory is a URL for
`bus.from_url` and what a reset of its streams means (a restart that kept nothing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from realtime.bus import Backend, Event, Offset, from_url
from realtime.settings import Settings
from tests.conftest import flush_redis, make_settings, redis_url
from tests.proxy import running_proxy

pytestmark = pytest.mark.anyio

RETENTION = 5
# more than the retention by far: Redis trims `MAXLEN ~` by whole stream nodes (100
# entries each), so only past 200 publications is the start surely trimmed
TRIMMED = 250
BOUND = 10.0  # seconds: generous, only there so a broken backend fails instead of hanging


async def restart(backend: Backend, settings: Settings) -> Backend:
    """The memory backend's reset: its streams live in the instance, so a new one (a
    restarted server) has kept nothing."""
    await backend.close()
    return from_url("memory://", settings)


async def emptied(backend: Backend, settings: Settings) -> Backend:
    """Redis's reset: it restarted empty (FLUSHDB), the same backend goes on."""
    flush_redis()
    return backend


@dataclass(frozen=True)
class Factory:
    name: str
    url: Callable[[], str]
    reset: Callable[[Backend, Settings], Awaitable[Backend]]


FACTORIES = [Factory("memory", lambda: "memory://", restart), Factory("redis", redis_url, emptied)]


class Subject:
    """A backend under test; `reset()` resets its streams (and may replace `backend`)."""

    def __init__(self, factory: Factory, settings: Settings) -> None:
        self._factory, self._settings = factory, settings
        self.backend = from_url(factory.url(), settings)
        self.closed = False

    async def reset(self) -> None:
        self.backend = await self._factory.reset(self.backend, self._settings)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            async with asyncio.timeout(BOUND):
                await self.backend.close()


@pytest.fixture(params=FACTORIES, ids=lambda factory: factory.name)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param.name == "redis":
        flush_redis()  # the tests' own database (REALTIME_TEST_REDIS)
    tested = Subject(request.param, make_settings(tmp_path, stream_retention=RETENTION))
    try:
        yield tested
    finally:
        await tested.close()


async def publish(backend: Backend, topic: str, count: int) -> list[Offset]:
    return [await backend.publish(topic, b"%d" % n) for n in range(1, count + 1)]


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


async def read_until(backend: Backend, positions: dict[str, int], count: int) -> list[Event]:
    """Read batches (a backend may return part of what is there) until `count` events."""
    events: list[Event] = []
    async with asyncio.timeout(BOUND):
        while len(events) < count:
            batch = await backend.read(positions, block=1.0)
            for event in batch:
                positions[event.topic] = max(positions[event.topic], event.seq)
            events.extend(batch)
    return events


# -- publish and history -------------------------------------------------------------


async def test_publications_are_seq_1_2_3_in_one_epoch(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", 3)
    assert [offset.seq for offset in offsets] == [1, 2, 3]
    assert len({offset.epoch for offset in offsets}) == 1


async def test_history_without_since_is_the_top_and_no_events(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", 3)
    history = await subject.backend.history("t", None)
    assert history.top == offsets[-1]
    assert history.events == [] and history.recovered is False


async def test_an_empty_topic_is_at_0_in_the_epoch_its_first_publication_gets(
    subject: Subject,
) -> None:
    top = (await subject.backend.history("t", None)).top
    assert top.seq == 0
    assert await subject.backend.publish("t", b"1") == Offset(top.epoch, 1)
    resumed = await subject.backend.history("t", top)
    assert resumed.recovered is True and seqs(resumed.events) == [1]


async def test_history_from_an_offset_is_exactly_what_followed(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", 4)
    await subject.backend.publish("t", b'{"step":5}', b"job.progress")
    history = await subject.backend.history("t", offsets[1])
    assert history.recovered is True and history.top.seq == 5
    assert seqs(history.events) == [3, 4, 5]
    assert [(e.topic, e.data, e.name) for e in history.events] == [
        ("t", b"3", b"message"),
        ("t", b"4", b"message"),
        ("t", b'{"step":5}', b"job.progress"),
    ]


async def test_history_from_the_top_is_recovered_with_no_events(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", 2)
    history = await subject.backend.history("t", offsets[-1])
    assert history.recovered is True and history.events == []


async def test_history_from_the_start_is_all_that_is_retained(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", 3)
    history = await subject.backend.history("t", Offset.start())
    assert history.recovered is True and history.top == offsets[-1]
    assert [e.data for e in history.events] == [b"1", b"2", b"3"]


async def test_trimmed_history_is_not_recovered(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", TRIMMED)
    trimmed = await subject.backend.history("t", offsets[0])
    assert trimmed.recovered is False and trimmed.events == []
    assert trimmed.top == offsets[-1]
    # the newest `retention` events are always kept
    recent = await subject.backend.history("t", offsets[-RETENTION - 1])
    assert recent.recovered is True
    assert seqs(recent.events) == list(range(TRIMMED - RETENTION + 1, TRIMMED + 1))


async def test_an_events_unless_topic_is_kept(subject: Subject) -> None:
    await subject.backend.publish("t", b"1", b"job.done", unless="job:7")
    await subject.backend.publish("t", b"2")
    history = await subject.backend.history("t", Offset.start())
    assert [e.unless for e in history.events] == ["job:7", None]
    read = await read_until(subject.backend, {"t": 0}, 2)
    assert [e.unless for e in read] == ["job:7", None]


async def test_an_event_carries_the_time_it_was_published(subject: Subject) -> None:
    before = time.time()
    await publish(subject.backend, "t", 2)
    after = time.time()
    history = await subject.backend.history("t", Offset.start())
    read = await read_until(subject.backend, {"t": 0}, 2)
    _, page = await subject.backend.page("t", None, 10, reverse=False)
    for events in (history.events, read, page):
        assert len(events) == 2
        assert all(before <= event.at <= after for event in events), events


async def test_page_forward_and_backward_from_a_cursor(subject: Subject) -> None:
    offsets = await publish(subject.backend, "t", RETENTION - 1)  # all of it retained
    await subject.backend.publish("t", b'{"step":5}', b"job.progress")
    top, events = await subject.backend.page("t", None, 2, reverse=False)
    assert top.seq == 5 and top.epoch == offsets[0].epoch and seqs(events) == [1, 2]
    assert seqs((await subject.backend.page("t", 2, 2, reverse=False))[1]) == [3, 4]
    assert seqs((await subject.backend.page("t", 3, 10, reverse=False))[1]) == [4, 5]
    assert (await subject.backend.page("t", 5, 10, reverse=False))[1] == []
    newest = (await subject.backend.page("t", None, 2, reverse=True))[1]
    assert seqs(newest) == [5, 4]
    assert (newest[0].data, newest[0].name) == (b'{"step":5}', b"job.progress")
    assert seqs((await subject.backend.page("t", 4, 3, reverse=True))[1]) == [3, 2, 1]
    assert seqs((await subject.backend.page("t", 2, 3, reverse=True))[1]) == [1]
    assert (await subject.backend.page("t", 1, 3, reverse=True))[1] == []


async def test_a_page_of_an_empty_topic_gives_it_its_epoch(subject: Subject) -> None:
    top, events = await subject.backend.page("t", None, 5, reverse=True)
    assert top.seq == 0 and events == []
    assert (await subject.backend.publish("t", b"1")).epoch == top.epoch


async def test_a_page_of_a_trimmed_topic_starts_at_the_oldest_retained(
    subject: Subject,
) -> None:
    await publish(subject.backend, "t", TRIMMED)
    top, events = await subject.backend.page("t", None, 1000, reverse=False)
    assert top.seq == TRIMMED and len(events) >= RETENTION
    assert seqs(events) == list(range(events[0].seq, TRIMMED + 1))  # no gap after the oldest


async def test_an_offset_of_another_epoch_or_past_the_top_is_not_recovered(
    subject: Subject,
) -> None:
    top = (await publish(subject.backend, "t", 3))[-1]
    for offset in (Offset(f"not-{top.epoch}", 1), Offset(top.epoch, top.seq + 1)):
        history = await subject.backend.history("t", offset)
        assert history.recovered is False and history.events == [], offset
        assert history.top == top


async def test_a_reset_stream_has_a_new_epoch_and_old_offsets_are_lost(
    subject: Subject,
) -> None:
    old = (await publish(subject.backend, "t", 2))[-1]
    await subject.reset()
    assert await subject.backend.epoch("t") is None
    history = await subject.backend.history("t", old)
    assert history.recovered is False and history.events == []
    assert history.top.epoch != old.epoch and history.top.seq == 0
    assert await subject.backend.publish("t", b"again") == Offset(history.top.epoch, 1)


async def test_epoch_is_none_until_the_topic_has_a_stream(subject: Subject) -> None:
    assert await subject.backend.epoch("t") is None
    offset = await subject.backend.publish("t", b"1")
    assert await subject.backend.epoch("t") == offset.epoch


async def test_a_retried_key_returns_the_first_offset_and_appends_nothing(
    subject: Subject,
) -> None:
    backend = subject.backend
    first = await backend.publish("t", b"first", key="k1")
    assert await backend.publish("t", b"retry", key="k1") == first
    assert (await backend.publish("t", b"other", key="k2")).seq == first.seq + 1
    assert (await backend.publish("u", b"elsewhere", key="k1")).seq == 1  # keys are per topic
    events = (await backend.history("t", Offset.start())).events
    assert [e.data for e in events] == [b"first", b"other"]


# -- live reading --------------------------------------------------------------------


async def test_read_returns_the_events_after_the_positions(subject: Subject) -> None:
    await publish(subject.backend, "a", 3)
    await publish(subject.backend, "b", 2)
    await publish(subject.backend, "unread", 1)
    events = await read_until(subject.backend, {"a": 1, "b": 0}, 4)
    assert [(e.topic, e.seq) for e in events if e.topic == "a"] == [("a", 2), ("a", 3)]
    assert [(e.topic, e.seq) for e in events if e.topic == "b"] == [("b", 1), ("b", 2)]
    assert len(events) == 4


async def test_read_waits_for_a_publication(subject: Subject) -> None:
    await publish(subject.backend, "a", 1)
    assert await subject.backend.read({"a": 1}, block=0.1) == []
    reading = asyncio.create_task(subject.backend.read({"a": 1}, block=BOUND * 3))
    await asyncio.sleep(0.1)
    await subject.backend.publish("a", b"2")
    async with asyncio.timeout(BOUND):
        events = await reading
    assert [(e.topic, e.seq, e.data) for e in events] == [("a", 2, b"2")]


async def test_wake_ends_a_blocked_read_early(subject: Subject) -> None:
    reading = asyncio.create_task(subject.backend.read({"a": 0}, block=BOUND * 3))
    async with asyncio.timeout(BOUND):
        while not reading.done():  # a wake sent before the read blocked may be missed
            await subject.backend.wake()
            await asyncio.wait({reading}, timeout=0.5)
    assert reading.result() == []


async def test_a_wake_before_the_first_read_ends_that_read(subject: Subject) -> None:
    """A node that subscribes a topic right after start wakes its reader before the
    reader's first XREAD: that read must still end, not wait out its block."""
    await subject.backend.wake()
    async with asyncio.timeout(BOUND):
        assert await subject.backend.read({"a": 0}, block=BOUND * 3) == []


# -- presence, ping, close -----------------------------------------------------------


async def test_presence_set_list_remove(subject: Subject) -> None:
    backend = subject.backend
    await backend.presence_set("t", "node:1", {"sub": "alice"})
    await backend.presence_set("t", "node:2", {"sub": "bob"})
    await backend.presence_set("t", "node:1", {"sub": "alice", "name": "Alice"})  # refresh
    listed = sorted(await backend.presence_list("t"), key=lambda info: info["sub"])
    assert listed == [{"sub": "alice", "name": "Alice"}, {"sub": "bob"}]
    await backend.presence_remove("t", "node:2")
    await backend.presence_remove("t", "never-there")
    assert await backend.presence_list("t") == [{"sub": "alice", "name": "Alice"}]
    assert await backend.presence_list("elsewhere") == []


async def test_presence_writes_made_at_once_are_all_applied_in_their_order(
    subject: Subject,
) -> None:
    """A crowd joining and leaving at once (a reconnect storm): the Redis backend sends
    such writes together, and none may be lost or reordered."""
    backend = subject.backend
    members = [(f"t{n % 3}", f"node:{n}", {"sub": f"u{n}"}) for n in range(1200)]
    async with asyncio.timeout(BOUND):
        await asyncio.gather(*(backend.presence_set(*member) for member in members))
        # the same member set, removed and set again in one moment: the last write wins
        await asyncio.gather(
            backend.presence_set("t0", "node:x", {"sub": "first"}),
            backend.presence_remove("t0", "node:x"),
            backend.presence_set("t0", "node:x", {"sub": "last"}),
        )
        listed = {
            info["sub"]
            for topic in ("t0", "t1", "t2")
            for info in await backend.presence_list(topic)
        }
        assert listed == {f"u{n}" for n in range(1200)} | {"last"}
        # a refresh of them all, then all but the first ten leave at once
        await backend.presence_set_many(
            [(t, m, {"sub": i["sub"], "name": "again"}) for t, m, i in members]
        )
        await asyncio.gather(*(backend.presence_remove(t, m) for t, m, _ in members[10:]))
        left = [info for topic in ("t0", "t1", "t2") for info in await backend.presence_list(topic)]
    expected = [{"sub": f"u{n}", "name": "again"} for n in range(10)] + [{"sub": "last"}]
    assert sorted(left, key=lambda info: info["sub"]) == sorted(
        expected, key=lambda info: info["sub"]
    )


async def test_presence_writes_of_an_unreachable_redis_all_fail_in_time(tmp_path: Path) -> None:
    """Every write of a batch gets its own answer: BusUnavailable, none left waiting."""
    settings = make_settings(tmp_path, redis_timeout=0.5)
    backend = from_url("redis://127.0.0.1:1/0", settings)  # nothing listens on port 1
    try:
        async with asyncio.timeout(BOUND):
            outcomes = await asyncio.gather(
                *(backend.presence_set("t", f"node:{n}", {"sub": "a"}) for n in range(20)),
                backend.presence_remove("t", "node:0"),
                return_exceptions=True,
            )
    finally:
        await backend.close()
    assert [type(outcome).__name__ for outcome in outcomes] == ["BusUnavailable"] * 21


async def test_a_bounded_close_returns_while_a_presence_batch_hangs(tmp_path: Path) -> None:
    """Redis black-holed (packets held, never answered) with a presence write on the wire:
    the shutdown's bound on the bus's close holds, and the write is answered."""
    from realtime.lifespan import bounded

    with running_proxy(redis_url()) as proxy:
        settings = make_settings(tmp_path, redis_timeout=30.0)  # the write never times out
        backend = from_url(proxy.url(redis_url()), settings)
        await backend.presence_set("t", "node:1", {"sub": "a"})  # connected, answered
        proxy.hole()
        writing = asyncio.create_task(backend.presence_set("t", "node:2", {"sub": "b"}))
        await asyncio.sleep(0.2)  # the batch is on the wire, unanswered
        started = time.monotonic()
        async with asyncio.timeout(BOUND):
            await bounded(backend.close(), 0.5, "the bus")
            outcome = await asyncio.gather(writing, return_exceptions=True)
        proxy.restore()
    assert time.monotonic() - started < BOUND
    assert [type(error).__name__ for error in outcome] == ["BusUnavailable"]


async def test_ping_answers_true(subject: Subject) -> None:
    assert await subject.backend.ping() is True


async def test_close_returns(subject: Subject) -> None:
    await subject.backend.publish("t", b"1")
    await subject.close()  # within BOUND
    assert subject.closed

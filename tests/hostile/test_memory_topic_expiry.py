"""The embedded bus forgets a topic nobody used for REALTIME_STREAM_TTL, as Redis expires
an idle stream: before, every user's personal channel (and any topic ever published to)
stayed in the process for its whole life, a map an authenticated user could grow at will."""

from __future__ import annotations

import time

import pytest

from realtime.bus import Offset
from realtime.bus.memory import MemoryBackend

pytestmark = pytest.mark.anyio

TTL = 0.05


async def test_an_idle_topic_is_forgotten_and_its_resume_says_not_recovered() -> None:
    backend = MemoryBackend(100, ttl=TTL)
    offset = await backend.publish("user.acme.alice", b'{"n":1}')
    time.sleep(TTL * 2)
    await backend.publish("user.acme.bob", b'{"n":1}')  # a new topic: the sweep runs
    assert await backend.epoch("user.acme.alice") is None
    assert set(backend._topics) == {"user.acme.bob"}
    history = await backend.history("user.acme.alice", Offset(offset.epoch, offset.seq))
    assert history.recovered is False  # a new epoch: the client is told, nothing is faked
    assert history.top.epoch != offset.epoch


async def test_a_topic_in_use_is_kept() -> None:
    backend = MemoryBackend(100, ttl=TTL)
    subscribed = await backend.publish("broadcast", b'{"n":1}')
    read = await backend.publish("project.7", b'{"n":1}')
    time.sleep(TTL * 0.6)
    await backend.read({"broadcast": subscribed.seq}, block=0)  # the hub's read loop
    await backend.history("project.7", None)  # a subscribe reads its history
    time.sleep(TTL * 0.6)
    await backend.publish("other", b'{"n":1}')
    assert await backend.epoch("broadcast") == subscribed.epoch
    assert await backend.epoch("project.7") == read.epoch
    events = (await backend.history("broadcast", subscribed)).events
    assert events == []  # nothing lost, nothing new


async def test_the_default_keeps_topics_for_a_day() -> None:
    backend = MemoryBackend(100)
    first = await backend.publish("a", b"{}")
    await backend.publish("b", b"{}")
    assert await backend.epoch("a") == first.epoch

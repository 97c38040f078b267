"""The bus on Redis streams: one stream per topic, appended by one atomic script.

Keys use a hash tag per topic (`rt:{topic}:...`) so a topic's stream, metadata and
presence live in one Redis Cluster slot. Stream ids are `<seq>-0`: the sequence number is
the id, so history is an XRANGE and a gap in retained history is visible. Live delivery
reads the same stream (XREAD BLOCK), so history and live delivery cannot disagree.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from realtime.bus import (
    ANY_EPOCH,
    Backend,
    BusOutcomeUnknown,
    BusUnavailable,
    Event,
    History,
    Offset,
)

# KEYS: stream, meta. ARGV: epoch candidate, maxlen, ttl seconds, data, event name,
# `unless` topic ('' for none), the publisher's time (Unix seconds: the lag metric).
PUBLISH = """
local seq = redis.call('HINCRBY', KEYS[2], 's', 1)
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch)
end
local fields = {'d', ARGV[4], 'e', ARGV[5], 't', ARGV[7]}
if ARGV[6] ~= '' then
  table.insert(fields, 'u')
  table.insert(fields, ARGV[6])
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], seq .. '-0', unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {epoch, seq}
"""

# PUBLISH with an idempotency key (KEYS[3]): a key seen before answers the offset of the
# publication it made, and nothing is appended; the key lives as long as the stream does.
PUBLISH_ONCE = """
local first = redis.call('GET', KEYS[3])
if first then
  local sep = string.find(first, ':', 1, true)
  return {string.sub(first, 1, sep - 1), string.sub(first, sep + 1)}
end
""" + PUBLISH.replace(
    "return {epoch, seq}",
    "redis.call('SET', KEYS[3], epoch .. ':' .. seq, 'EX', ARGV[3])\nreturn {epoch, seq}",
)

# KEYS: stream, meta. ARGV: epoch candidate, ttl seconds, first seq wanted (-1: none).
# An empty topic gets its epoch here, so an offset handed out before the first
# publication still resumes.
HISTORY = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
local seq = redis.call('HGET', KEYS[2], 's') or '0'
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local events = {}
if tonumber(ARGV[3]) >= 0 then
  events = redis.call('XRANGE', KEYS[1], ARGV[3] .. '-0', '+')
end
return {epoch, seq, oldest, events}
"""

# KEYS: stream, meta. ARGV: epoch candidate, ttl seconds, "rev" or "fwd", first stream id,
# count. HISTORY's top and one XRANGE (or XREVRANGE), read together.
PAGE = """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'e', epoch)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
local seq = redis.call('HGET', KEYS[2], 's') or '0'
local events
if ARGV[3] == 'rev' then
  events = redis.call('XREVRANGE', KEYS[1], ARGV[4], '-', 'COUNT', ARGV[5])
else
  events = redis.call('XRANGE', KEYS[1], ARGV[4], '+', 'COUNT', ARGV[5])
end
return {epoch, seq, events}
"""

# KEYS: zset (member -> expiry), hash (member -> info). ARGV: now.
PRESENCE_LIST = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
  redis.call('HDEL', KEYS[2], unpack(stale))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))
"""


# what `failures` counts by (the metrics' `operation` label)
OPERATIONS = (
    "publish",
    "history",
    "page",
    "read",
    "epoch",
    "wake",
    "presence_set",
    "presence_remove",
    "presence_list",
    "ping",
)


# presence writes sent in one round trip at most (a socket's join or leave, a refresh)
PRESENCE_BATCH = 500


# (topic, member, info or None to remove, the future its caller waits for)
_Write = tuple[str, str, bytes | None, asyncio.Future[None]]


class _PresenceWriter:
    """The presence writes of the moment, sent together: each socket that subscribes or
    leaves writes an entry, and a crowd doing it at once (a reconnect storm: 5,000 sockets
    and twice as many entries) made as many round trips, each waiting for one of the
    pool's connections. A write waits for its batch; a batch is sent once the writes made
    in the same turn of the loop are in it, and the next one while it is on the wire."""

    def __init__(self, send: Callable[[list[tuple[str, str, bytes | None]]], Awaitable[None]]):
        self._send = send
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, topic: str, member: str, info: bytes | None) -> None:
        await self.write_many([(topic, member, info)])

    async def write_many(self, writes: list[tuple[str, str, bytes | None]]) -> None:
        """Queue these writes; return once they are all sent (BusUnavailable if any failed)."""
        loop = asyncio.get_running_loop()
        waits = []
        for start in range(0, len(writes), PRESENCE_BATCH):
            chunk = writes[start : start + PRESENCE_BATCH]
            done = loop.create_future()
            done.add_done_callback(_retrieved)  # its caller may be gone (a socket closed)
            # a batch holds several callers' writes: each caller fails with the batch its
            # writes were in, so each chunk's future goes with every write of the chunk
            self._queue.extend((topic, member, info, done) for topic, member, info in chunk)
            waits.append(done)
        if self._flusher is None and self._queue:
            self._flusher = asyncio.create_task(self._flush())
        for done in waits:
            await asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:PRESENCE_BATCH]
                del self._queue[:PRESENCE_BATCH]
                outcome = await self._sent(batch)
                for *_, done in batch:
                    _settle(done, outcome)
        finally:
            self._flusher = None

    async def _sent(self, batch: list[_Write]) -> BaseException | None:
        """None once the batch is written, or why not (BusUnavailable)."""
        try:
            await self._send([(topic, member, info) for topic, member, info, _ in batch])
        except BusUnavailable as error:
            return error
        except BaseException:  # cancelled (the bus closes): nobody may wait forever
            for *_, done in (*batch, *self._queue):
                _settle(done, BusUnavailable("the presence writer was stopped"))
            self._queue.clear()
            raise
        return None

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            # asyncio.wait, not `await`: the flusher's CancelledError is not ours, and a
            # cancellation of this close (the shutdown's bound) must still reach it
            await asyncio.wait([self._flusher])
        for *_, done in self._queue:
            _settle(done, BusUnavailable("the bus is closed"))
        self._queue.clear()


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:  # an exception of its own: one raised in many callers would pile up tracebacks
        done.set_exception(type(error)(*error.args))


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def _stream(topic: str) -> str:
    return f"rt:{{{topic}}}:s"


def _meta(topic: str) -> str:
    return f"rt:{{{topic}}}:m"


def _presence(topic: str) -> tuple[str, str]:
    return f"rt:{{{topic}}}:pz", f"rt:{{{topic}}}:ph"


def _event(topic: str, stream_id: bytes, fields: dict[bytes, bytes]) -> Event:
    unless = fields.get(b"u")
    name = fields.get(b"e", b"message")
    at = float(fields.get(b"t", 0.0))  # an entry written before the stamp: unknown
    return Event(
        topic, _seq(stream_id), fields[b"d"], name, unless.decode() if unless else None, at
    )


def _never_sent(error: BaseException) -> bool:
    """The error came before any command was written: no connection could be made (or
    borrowed from the pool). Anything else on a write leaves its outcome unknown."""
    text = str(error)
    return "connecting to" in text or "Timeout connecting" in text or "No connection" in text


def _seq(stream_id: bytes) -> int:
    return int(stream_id.split(b"-", 1)[0])


class RedisBackend(Backend):
    """`redis://`, `rediss://` (TLS) or `unix://` (a socket path), any redis-py URL."""

    def __init__(
        self, url: str, *, retention: int, ttl: int, presence_ttl: float, timeout: float
    ) -> None:
        # a burst of publications waits for a free connection instead of failing
        # and a connection left dead by a Redis restart is retried on a fresh one; a
        # timeout is not retried (the command may have run: a publication would repeat)
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[RedisConnectionError],
        )
        self._timeout = timeout
        self._redis = aioredis.Redis(connection_pool=pool)
        # XREAD BLOCK holds its connection: the reader gets a client of its own
        self._reader = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._publish = self._redis.register_script(PUBLISH)
        self._publish_once = self._redis.register_script(PUBLISH_ONCE)
        self._presence_list = self._redis.register_script(PRESENCE_LIST)
        self._history = self._redis.register_script(HISTORY)
        self._page = self._redis.register_script(PAGE)
        self._retention = retention
        self._ttl = ttl
        self._presence_ttl = presence_ttl
        self._wake_key = f"rt:wake:{secrets.token_hex(8)}"
        # A concrete id, not "$": a wake sent before the reader's first XREAD (a topic
        # subscribed right after start) is still seen, instead of waiting out a block.
        # The key is this node's own, so what it holds is only this node's wakes.
        self._wake_id = b"0-0"
        self._failures = dict.fromkeys(OPERATIONS, 0)
        self._presence = _PresenceWriter(self._write_presence)

    def failures(self) -> Mapping[str, int]:
        return self._failures

    async def _call(self, operation: str, coro: Any, *, write: bool = False) -> Any:
        """One call, retries included, within REALTIME_REDIS_TIMEOUT. A `write` whose
        answer did not come in time may have been applied: BusOutcomeUnknown. A failure
        is counted under `operation` (the metrics)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await coro
        except (TimeoutError, RedisTimeoutError) as error:
            self._failures[operation] += 1
            if write:
                raise BusOutcomeUnknown(type(error).__name__) from None
            raise BusUnavailable(type(error).__name__) from None
        except (RedisError, OSError) as error:
            self._failures[operation] += 1
            if write and not _never_sent(error):
                # the connection failed after the command went out: it may have run
                raise BusOutcomeUnknown(type(error).__name__) from None
            raise BusUnavailable(type(error).__name__) from None

    async def publish(
        self,
        topic: str,
        data: bytes,
        name: bytes = b"message",
        key: str | None = None,
        unless: str | None = None,
    ) -> Offset:
        keys = [_stream(topic), _meta(topic)]
        script = self._publish
        if key is not None:
            keys.append(f"rt:{{{topic}}}:k:{key}")
            script = self._publish_once
        args: list[str | int | bytes] = [
            secrets.token_hex(4),
            self._retention,
            self._ttl,
            data,
            name,
            unless or "",
            repr(time.time()),  # the shortest exact text of the float
        ]
        epoch, seq = await self._call("publish", script(keys=keys, args=args), write=True)
        return Offset(epoch.decode(), int(seq))

    async def history(self, topic: str, since: Offset | None) -> History:
        first = since.seq + 1 if since else -1
        args: list[str | int] = [secrets.token_hex(4), self._ttl, first]
        epoch, seq, oldest, entries = await self._call(
            "history", self._history(keys=[_stream(topic), _meta(topic)], args=args)
        )
        top = Offset(epoch.decode(), int(seq))
        if since is not None and since.epoch == ANY_EPOCH:
            since = Offset(top.epoch, since.seq)
        if since is None or since.epoch != top.epoch or since.seq > top.seq:
            return History(top, recovered=False)
        oldest_seq = _seq(oldest[0][0]) if oldest else top.seq + 1
        if oldest_seq > since.seq + 1:
            return History(top, recovered=False)  # trimmed: part of what followed is gone
        events = [_event(topic, i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in entries]
        return History(top, True, events)

    async def page(
        self, topic: str, cursor: int | None, limit: int, reverse: bool
    ) -> tuple[Offset, list[Event]]:
        # stream ids are `<seq>-0`: "seq below the cursor" is the inclusive id cursor-1
        if reverse:
            first = "+" if cursor is None else f"{max(cursor - 1, 0)}-0"
        else:
            first = "-" if cursor is None else f"{cursor + 1}-0"
        direction = "rev" if reverse else "fwd"
        args: list[str | int] = [secrets.token_hex(4), self._ttl, direction, first, limit]
        epoch, seq, entries = await self._call(
            "page", self._page(keys=[_stream(topic), _meta(topic)], args=args)
        )
        events = [_event(topic, i, dict(zip(f[::2], f[1::2], strict=True))) for i, f in entries]
        return Offset(epoch.decode(), int(seq)), events

    async def read(self, positions: dict[str, int], block: float) -> list[Event]:
        streams: dict[Any, Any] = {_stream(t): f"{seq}-0" for t, seq in positions.items()}
        streams[self._wake_key] = self._wake_id
        try:
            # a frozen Redis never ends the BLOCK: bound the wait past it
            async with asyncio.timeout(block + self._timeout):
                answer: Any = await self._reader.xread(
                    streams, block=int(block * 1000) or 1, count=1000
                )
        except (RedisError, OSError, TimeoutError) as error:
            self._failures["read"] += 1
            raise BusUnavailable(type(error).__name__) from None
        events: list[Event] = []
        for key, entries in answer or []:
            if key.decode() == self._wake_key:
                self._wake_id = entries[-1][0]
                continue
            topic = key.decode()[4:-3]  # rt:{topic}:s
            events.extend(_event(topic, i, f) for i, f in entries)
        return events

    async def epoch(self, topic: str) -> str | None:
        value = await self._call("epoch", self._redis.hget(_meta(topic), "e"))
        return value.decode() if value else None

    async def wake(self) -> None:
        """One XADD to this node's wake stream ends the reader's XREAD BLOCK."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": 1}, maxlen=10)
            pipe.expire(self._wake_key, 3600)
            await self._call("wake", pipe.execute())

    async def presence_set(self, topic: str, member: str, info: dict[str, Any]) -> None:
        await self._presence.write(topic, member, orjson.dumps(info))

    async def presence_set_many(self, entries: list[tuple[str, str, dict[str, Any]]]) -> None:
        # in the same queue as the joins and leaves: a leave made after this refresh was
        # read is written after it (an entry written back would linger for a TTL)
        await self._presence.write_many([(t, m, orjson.dumps(i)) for t, m, i in entries])

    async def presence_remove(self, topic: str, member: str) -> None:
        await self._presence.write(topic, member, None)

    async def _write_presence(self, writes: list[tuple[str, str, bytes | None]]) -> None:
        """Presence entries set (info) or removed (None), in order, in one round trip."""
        expiry, keep = time.time() + self._presence_ttl, int(self._presence_ttl * 4)
        kept: set[str] = set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for topic, member, info in writes:
                zset, table = _presence(topic)
                if info is None:
                    pipe.zrem(zset, member)
                    pipe.hdel(table, member)
                else:
                    pipe.zadd(zset, {member: expiry})
                    pipe.hset(table, member, info)
                    kept.update((zset, table))
            for key in kept:
                pipe.expire(key, keep)
            operation = "presence_set" if kept else "presence_remove"
            await self._call(operation, pipe.execute())

    async def presence_list(self, topic: str) -> list[dict[str, Any]]:
        values = await self._call(
            "presence_list", self._presence_list(keys=list(_presence(topic)), args=[time.time()])
        )
        return [orjson.loads(value) for value in values if value]

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            self._failures["ping"] += 1
            return False

    async def close(self) -> None:
        await self._presence.close()
        await self._redis.aclose(close_connection_pool=True)
        await self._reader.aclose()

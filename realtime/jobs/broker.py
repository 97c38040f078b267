"""The Redis job queue: taskiq-redis's stream broker with its verified gaps closed.

taskiq-redis 1.2.4's `RedisStreamBroker` (consumer groups, ack after the task) is the
base. What it gets wrong, and what this subclass does instead:

- An orphaned message (its worker died) was reclaimed only after a *new* message arrived,
  so on an idle queue never: here every worker scans for orphans every
  `reclaim_interval` seconds, whether or not anything new arrives.
- A job running longer than `idle_timeout` was reclaimed while still running: here a
  keeper refreshes the claim of every message this worker runs, every quarter of the
  claim timeout, so only a worker that stopped refreshing (dead) loses its messages.
- `consumer_id="$"` skipped messages queued before the group existed: the group is
  created at "0".
- An idle worker ignored SIGTERM for 30-70 s: reads block for at most `block` seconds.
- `maxlen=None` grew the stream without bound, and a trim by MAXLEN would drop queued
  jobs: an acknowledged message is deleted with its ack, so the stream holds exactly the
  jobs not yet done.
- The reclaim lock had no timeout (a killed worker holding it blocked reclaim for good):
  there is no lock; XAUTOCLAIM is atomic, so two workers can never claim the same message.

Redelivery can still run a job twice in sequence (the first run died after some steps),
so tasks must be resumable: see `realtime.jobs.steps`, which records steps and fences out a run
that lost its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from taskiq import AckableMessage, TaskiqMessage
from taskiq_redis import RedisStreamBroker

from realtime.jobs.delivery import asked_again, delivery, run_again

__all__ = ["JobStreamBroker", "delivery", "run_again"]

logger = logging.getLogger("realtime.jobs")

PRUNE_EVERY = 60.0  # seconds between clean-ups of the consumers of stopped workers
QUEUE_PAGE = 500  # stream entries read per call when listing the queue

# Touch (or release) the messages a consumer still owns; a message another consumer took
# over is left alone. ARGV: group, consumer, idle ms to set, ids...
_TOUCH = """
local owned = 0
for i = 4, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #entry > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    owned = owned + 1
  end
end
return owned
"""

# Acknowledge and delete a message, only if this consumer still owns it: acking a message
# that was handed to another worker would cancel that worker's redelivery guarantee.
_ACK = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #entry == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""


class JobStreamBroker(RedisStreamBroker):
    def __init__(
        self,
        url: str,
        *,
        queue: str,
        group: str,
        claim_timeout: float,
        reclaim_interval: float,
        block: float = 1.0,
    ) -> None:
        super().__init__(
            url,
            queue_name=queue,
            consumer_group_name=group,
            consumer_id="0",
            xread_block=int(block * 1000),
            idle_timeout=int(claim_timeout * 1000),
            xread_count=1,  # take a job only when there is room to run it
            unacknowledged_batch_size=1,
        )
        self.claim_timeout = claim_timeout
        self.reclaim_interval = reclaim_interval
        # the messages this worker runs and has not acked: id -> delivery number (a message
        # this worker takes back is a new delivery; the old one's ack must not count)
        self.owned: dict[str, int] = {}
        self._deliveries = 0
        self._cursor = "0-0"
        self.reclaimed = 0
        self._holding = False
        self._keeper: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        await super().startup()
        if self.is_worker_process:
            self._keeper = asyncio.create_task(self._keep_claims())

    async def shutdown(self) -> None:
        await self._stop_keeper()
        await super().shutdown()

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        loop = asyncio.get_running_loop()
        next_scan = 0.0
        next_prune = loop.time() + PRUNE_EVERY
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                try:
                    if loop.time() >= next_prune:
                        next_prune = loop.time() + PRUNE_EVERY
                        await self._prune(redis)
                    if loop.time() >= next_scan:
                        claimed = await self._reclaim(redis)
                        # scan on at once while it finds orphans or has not walked the
                        # whole pending list: a dead worker's jobs are taken over together
                        more = claimed or self._cursor != "0-0"
                        next_scan = loop.time() + (0 if more else self.reclaim_interval)
                        for message in claimed:
                            yield message
                    wait = max(0.0, min(self.block / 1000, next_scan - loop.time()))
                    for message in await self._read(redis, wait):
                        yield message
                except ResponseError as error:
                    if "NOGROUP" in str(error):  # Redis lost the stream (restarted empty)
                        await self._declare_consumer_group()
                        continue
                    # READONLY, BUSY, OOM, MASTERDOWN...: Redis is there but refuses
                    logger.warning("job queue refused a read (%s); retrying", error)
                    await asyncio.sleep(1)
                except (RedisError, OSError) as error:
                    logger.warning("job queue unreachable (%s); retrying", type(error).__name__)
                    await asyncio.sleep(1)

    async def _read(self, redis: Redis, wait: float) -> list[AckableMessage]:
        fetched: Any = await redis.xreadgroup(
            self.consumer_group_name,
            self.consumer_name,
            {self.queue_name: ">"},
            block=max(1, int(wait * 1000)),
            count=1,
        )
        entries = [(i, fields) for _, batch in fetched or [] for i, fields in batch]
        return await self._messages(redis, entries)

    async def _reclaim(self, redis: Redis) -> list[AckableMessage]:
        """At most one orphan (idle past the claim timeout) per call: a worker takes over
        only what it has room to run; the cursor walks the whole pending list in turn."""
        cursor, entries, *_ = await redis.xautoclaim(
            self.queue_name,
            self.consumer_group_name,
            self.consumer_name,
            min_idle_time=self.idle_timeout,
            start_id=self._cursor,
            count=1,
        )
        self._cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        claimed = await self._messages(redis, [(i, f) for i, f in entries if f])
        self.reclaimed += len(claimed)  # realtime_job_reclaims_total
        for message in claimed:
            logger.warning("reclaimed a job from a worker that stopped: %s", message.data[:80])
        return claimed

    async def _messages(self, redis: Redis, entries: list[Any]) -> list[AckableMessage]:
        messages = []
        for message_id, fields in entries:
            key = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
            data = fields.get(b"data")
            if data is None:  # not a taskiq message: drop it rather than choke on it forever
                logger.error("dropping a job queue entry without data: %s", key)
                await redis.eval(_ACK, 1, self.queue_name, *self._owner(), key)
                continue
            self._deliveries += 1
            self.owned[key] = self._deliveries
            messages.append(AckableMessage(data=data, ack=self._acker(key, self._deliveries)))
        return messages

    async def depth(self) -> tuple[int, int]:
        """(entries in the queue's stream, entries delivered and not yet acknowledged)."""
        async with Redis(connection_pool=self.connection_pool) as redis:
            length = await redis.xlen(self.queue_name)
            pending = await redis.xpending(self.queue_name, self.consumer_group_name)
        return int(length), int(pending["pending"])

    async def _prune(self, redis: Redis) -> None:
        """Forget consumers of stopped workers (each process joins under a new name):
        only those with nothing pending, silent for ten claim timeouts. A live worker
        that were removed would simply be recreated by its next read."""
        silent_ms = self.claim_timeout * 10 * 1000
        for consumer in await redis.xinfo_consumers(self.queue_name, self.consumer_group_name):
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if (
                consumer["pending"] == 0
                and consumer["idle"] > silent_ms
                and name != self.consumer_name
            ):
                await redis.xgroup_delconsumer(self.queue_name, self.consumer_group_name, name)

    def _owner(self) -> tuple[str, str]:
        return self.consumer_group_name, self.consumer_name

    def _acker(self, message_id: str, delivery: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            if self._holding:
                return  # stopping: taskiq acks even a cancelled task; keep it for another
            if self.owned.get(message_id) != delivery:
                return  # an older delivery of a message this worker took back: not ours
            del self.owned[message_id]
            if asked_again():
                return  # left pending: reclaimed after the claim timeout, a natural backoff
            async with Redis(connection_pool=self.connection_pool) as redis:
                await redis.eval(_ACK, 1, self.queue_name, *self._owner(), message_id)

        return ack

    async def _touch(self, idle_ms: int) -> None:
        if not self.owned:
            return
        async with Redis(connection_pool=self.connection_pool) as redis:
            await redis.eval(_TOUCH, 1, self.queue_name, *self._owner(), idle_ms, *self.owned)

    async def _keep_claims(self) -> None:
        """Refresh the claims of running jobs so that no other worker reclaims them."""
        while True:
            await asyncio.sleep(self.claim_timeout / 4)
            try:
                await self._touch(0)
            except (RedisError, OSError) as error:
                logger.warning("could not refresh job claims (%s)", type(error).__name__)

    async def queued(self) -> list[TaskiqMessage]:
        """Every message in the stream: an entry stays until its job is acknowledged, so
        this is what waits and what runs. Entries that are not taskiq messages are skipped
        (the listener drops them)."""
        messages: list[TaskiqMessage] = []
        start = "-"
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                entries: Any = await redis.xrange(self.queue_name, min=start, count=QUEUE_PAGE)
                messages.extend(m for _, fields in entries if (m := self._parsed(fields)))
                if len(entries) < QUEUE_PAGE:
                    return messages
                start = "(" + _text(entries[-1][0])  # exclusive: after the last one read

    def _parsed(self, fields: dict[bytes, bytes]) -> TaskiqMessage | None:
        data = fields.get(b"data")
        if data is None:
            return None
        try:
            return self.formatter.loads(data)
        except ValueError:  # not a taskiq message (pydantic's ValidationError included)
            return None

    def hold_acks(self) -> None:
        """From now on acknowledge nothing: the worker is cancelling its unfinished jobs,
        and taskiq's receiver would acknowledge them as if they had ended. (A job that did
        end meanwhile is redelivered and finds itself final, doing nothing.)"""
        self._holding = True

    async def release(self) -> None:
        """Hand back the jobs this worker did not finish (a graceful stop): mark them idle
        past the claim timeout, so the next scan of any other worker takes them at once.
        The keeper stops first, so that no refresh in flight undoes the hand-back."""
        await self._stop_keeper()
        await self._touch(int(self.claim_timeout * 1000) + 1)
        self.owned.clear()

    async def _stop_keeper(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""One hub per node: local subscriptions, one reader for all their streams, fan-out.

Each event is serialized once per node and the same bytes go to every local subscriber's
bounded queue (a slow socket is closed with 1013 by its own queue, never delaying the
others). A subscription stays *pending* while its history is read: live events are
buffered, then after the answer the history and the buffer (without duplicates) are
delivered and the subscription goes live, so there is no gap and no duplicate at the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from realtime import protocol
from realtime.auth.principal import Principal
from realtime.bus import ANY_EPOCH, Backend, BusOutcomeUnknown, BusUnavailable, Event, Offset
from realtime.bus.presence import PresenceFeed
from realtime.bus.stats import READER, SUBSCRIBE, BusStats, kind
from realtime.exceptions import (
    Conflict,
    InvalidData,
    OutcomeUnknown,
    PermissionDenied,
    RequestError,
    Unavailable,
)

logger = logging.getLogger("realtime.bus.hub")
BLOCK = 1.0
YIELD_EVERY = 64  # events delivered between yields; well under the default send queue
RETRY_AFTER = 2


def bus_failure(error: BusUnavailable) -> RequestError:
    """What a client is answered when the bus fails: a publication sent and unanswered
    may have been published (OutcomeUnknown, TIMEOUT); anything else was not done
    (Unavailable). The one place bus errors meet ours; their codes are the table's."""
    if isinstance(error, BusOutcomeUnknown):
        return OutcomeUnknown(
            "the message bus did not answer in time; the message may have been published"
        )
    return Unavailable(RETRY_AFTER, "the message bus is unavailable")


class _Superseded(Exception):
    """The subscription was replaced or removed while it was being set up."""


class Subscriber(Protocol):
    id: str
    principal: Principal | None

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None: ...


@dataclass(slots=True)
class _Subscription:
    subscriber: Subscriber
    start: int
    pending: list[Event] | None = field(default_factory=list)
    # made by the server (the personal channel, connect hooks): the client may resume it
    # (subscribe again with `since`) but not unsubscribe it; it ends with the socket
    pinned: bool = False


class EventFrame(bytes):
    """A message frame (built once per event and node) that also carries the event it
    was made from, for a subscriber that does not forward the frame as it is (the jobs'
    compatibility stream writes the event's data alone): nobody parses a frame back."""

    event: Event


def message_frame(topic: str, epoch: str, event: Event) -> EventFrame:
    frame = EventFrame(protocol.message_frame(topic, epoch, event.seq, event.name, event.data))
    frame.event = event
    return frame


def _cursor(since: str | None) -> Offset | None:
    if since is None:
        return None
    offset = Offset.parse(since)
    if offset is None:
        raise InvalidData(f"since {since!r} is not an offset")
    return offset


def _presence_info(subscriber: Subscriber) -> dict[str, Any]:
    principal = subscriber.principal
    return {
        "sub": principal.sub if principal else None,
        "name": (principal.name or principal.username) if principal else None,
    }


def _publication(epoch: str, event: Event) -> dict[str, Any]:
    # the data as the publisher serialized it: written as it is, never parsed here
    data = orjson.Fragment(event.data)
    return {"offset": f"{epoch}:{event.seq}", "event": event.name.decode(), "data": data}


class Hub:
    def __init__(
        self, backend: Backend, presence_ttl: float, stats: BusStats | None = None
    ) -> None:
        """`stats`: where to count for the metrics (the app's `Metrics.bus`)."""
        self.backend = backend
        self.stats = stats if stats is not None else BusStats()
        self.stats.failures = backend.failures
        self.node = secrets.token_hex(4)
        self._presence_ttl = presence_ttl
        self._subs: dict[str, dict[str, _Subscription]] = {}
        self._positions: dict[str, int] = {}
        self._epochs: dict[str, str | None] = {}
        # the last seq this node published on each topic it has subscribers for
        self._published: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recheck = False
        self.healthy = True
        self.presence_feed = PresenceFeed(self)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._spawn(self._read_loop())
        self._spawn(self._heartbeat_loop())
        self._spawn(self.presence_feed.run())

    async def stop(self, bound: float) -> None:
        """Cancel the reader and heartbeat; wait for them at most `bound` seconds. A read
        cancelled while the bus is frozen can hang in the client library's disconnect
        (it waits for a connection that takes nothing), and must not hang the shutdown."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=bound)
        if late:
            logger.warning(
                "%d bus task(s) did not stop within %.1f s: left behind", len(late), bound
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ready(self) -> bool:
        return self.healthy and await self.backend.ping()

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        data: Any,
        event: str = protocol.MESSAGE,
        key: str | None = None,
        unless: str | None = None,
    ) -> Offset:
        """Publish `data` (serialized once, here) on `topic`; usable outside requests too.
        Subscribers receive it as `{"event": event, "topic", "offset", "data"}`, but for
        those also subscribed to the topic `unless` (they got it there). With an
        idempotency `key`, a retry publishes nothing and answers the first offset."""
        try:
            name = event.encode()
            offset = await self.backend.publish(topic, orjson.dumps(data), name, key, unless)
        except BusUnavailable as error:
            raise bus_failure(error) from None
        self.stats.published[kind(topic)] += 1
        if topic in self._positions:
            self._published[topic] = offset.seq
        return offset

    async def publish_user(
        self, sub: str, event: str, data: Any, *, tenant: str, unless: str | None = None
    ) -> Offset:
        """Publish on the personal channel of user `sub` of `tenant` (`user.<tenant>.<sub>`):
        every socket of that caller, on every node, gets `{"event": event, "topic",
        "offset", "data"}` (but a socket subscribed to `unless`); usable outside requests
        (jobs) too."""
        topic = protocol.personal_topic(tenant, sub)
        return await self.publish(topic, data, event, unless=unless)

    async def settle(self, limit: float) -> None:
        """Wait, at most `limit` seconds, until what this node published on topics it has
        subscribers for has been delivered to them (the reader delivers later, in its own
        task): the drain calls it before it closes the sockets."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while self._undelivered() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    def _undelivered(self) -> bool:
        positions = self._positions
        return any(seq > positions.get(topic, seq) for topic, seq in self._published.items())

    # -- history ---------------------------------------------------------------------

    async def history(
        self, topic: str, since: str | None, limit: int, reverse: bool = False
    ) -> dict[str, Any]:
        """A page of the topic's retained publications (`topics.history`): after `since`
        oldest first, or (`reverse`) before it newest first; `next` is the `since` of the
        following page, `more` whether it has anything, `offset` the topic's top when
        the page was read (subscribe with it to go live after what was read)."""
        cursor = _cursor(since)
        try:
            top, events = await self.backend.page(
                topic, cursor.seq if cursor else None, limit + 1, reverse
            )
        except BusUnavailable as error:
            raise bus_failure(error) from None
        if cursor is not None and cursor.epoch not in (ANY_EPOCH, top.epoch):
            raise Conflict(f"the topic's stream was reset: {since!r} is of another epoch")
        page = [_publication(top.epoch, event) for event in events[:limit]]
        following = page[-1]["offset"] if page else since
        return {
            "topic": topic,
            "offset": str(top),
            "publications": page,
            "next": following,
            "more": len(events) > limit,
        }

    # -- subscribing -----------------------------------------------------------------

    async def subscribe(
        self,
        subscriber: Subscriber,
        topic: str,
        since: str | Offset | None,
        *,
        pinned: bool = False,
    ) -> tuple[dict[str, Any], Callable[[], None], Callable[[], None]]:
        """Returns the answer, the callback that delivers history then goes live, and the
        one that cancels this subscription (and no later one on the topic) if the
        request that made it fails. `since=Offset.start()` replays the whole history.
        `pinned`: the server's own subscription (a resume of one stays pinned)."""
        subs = self._subs.setdefault(topic, {})
        replaced = subs.get(subscriber.id)
        pinned = pinned or (replaced is not None and replaced.pinned)
        subscription = _Subscription(subscriber, start=0, pinned=pinned)
        subs[subscriber.id] = subscription
        stats = self.stats
        if replaced is None:
            stats.subscriptions[kind(topic)] += 1
        offset = Offset.parse(since) if isinstance(since, str) else since
        try:
            history = await self.backend.history(topic, offset)
            if not self._current(topic, subscriber, subscription):
                raise _Superseded()
            await self._watch(topic, history.top)
            await self._presence_join(topic, subscriber)
            if not self._current(topic, subscriber, subscription):
                raise _Superseded()
        except BaseException as error:
            if self._current(topic, subscriber, subscription):
                self._remove(topic, subscriber.id)
            self._spawn(self._presence_leave(topic, subscriber.id, unless_subscribed=True))
            if isinstance(error, BusUnavailable):
                raise bus_failure(error) from None
            if isinstance(error, _Superseded):
                raise Conflict("unsubscribed (or subscribed again) meanwhile") from None
            raise
        subscription.start = history.top.seq
        answer = {"topic": topic, "offset": str(history.top), "recovered": history.recovered}
        if since is not None and not history.recovered:
            stats.unrecovered[SUBSCRIBE] += 1  # asked to resume, and could not

        def go_live() -> None:
            epoch, replayed, delivered = history.top.epoch, 0, 0
            for event in history.events:
                if not self._already_told(event, subscriber):
                    subscriber.enqueue(message_frame(topic, epoch, event), replay=True)
                    replayed += 1
            buffered, subscription.pending = subscription.pending or [], None
            for event in buffered:
                if event.seq > subscription.start:
                    if not self._already_told(event, subscriber):
                        subscriber.enqueue(message_frame(topic, epoch, event))
                        delivered += 1
                    subscription.start = event.seq
            stats.replayed[kind(topic)] += replayed
            stats.delivered[kind(topic)] += delivered

        def cancel() -> None:
            if self._current(topic, subscriber, subscription):
                self._leave(subscriber, topic)

        return answer, go_live, cancel

    def _already_told(self, event: Event, subscriber: Subscriber) -> bool:
        """Is the socket subscribed to the event's `unless` topic (it got it there)?"""
        return event.unless is not None and subscriber.id in self._subs.get(event.unless, ())

    def _current(self, topic: str, subscriber: Subscriber, subscription: _Subscription) -> bool:
        """Still the socket's live subscription? (an unsubscribe may have run meanwhile)"""
        return self._subs.get(topic, {}).get(subscriber.id) is subscription

    async def _watch(self, topic: str, top: Offset) -> None:
        if topic in self._positions and self._epochs.get(topic) == top.epoch:
            return
        self._positions[topic] = top.seq
        self._epochs[topic] = top.epoch
        await self.backend.wake()

    def unsubscribe(self, subscriber: Subscriber, topic: str) -> bool:
        """A client's unsubscribe; False if the socket was not subscribed. The server's
        own subscriptions (pinned) are refused: PERMISSION_DENIED."""
        subscription = self._subs.get(topic, {}).get(subscriber.id)
        if subscription is not None and subscription.pinned:
            raise PermissionDenied(
                f"topic {topic!r} is subscribed by the server until the socket closes"
            )
        return self._leave(subscriber, topic)

    def _leave(self, subscriber: Subscriber, topic: str) -> bool:
        self.presence_feed.forget(topic, subscriber.id)
        if not self._remove(topic, subscriber.id):
            return False
        self._spawn(self._presence_leave(topic, subscriber.id))
        return True

    def drop(self, subscriber: Subscriber) -> None:
        """The socket is gone: forget all its subscriptions, the server's own included
        (presence in the background)."""
        for topic in [t for t, subs in self._subs.items() if subscriber.id in subs]:
            self._leave(subscriber, topic)

    def subscription_state(self, topic: str, member: str) -> str:
        """ "live", "pending" (its history not delivered yet) or "gone"."""
        subscription = self._subs.get(topic, {}).get(member)
        if subscription is None:
            return "gone"
        return "pending" if subscription.pending is not None else "live"

    async def watch_presence(
        self, subscriber: Subscriber, topic: str
    ) -> tuple[list[dict[str, Any]], bool]:
        """Push `presence.join`/`presence.leave` of `topic` to the socket (subscribed to
        it) after the returned snapshot; see realtime.bus.presence."""
        return await self.presence_feed.watch(subscriber, topic)

    def pinned(self, subscriber: Subscriber) -> list[dict[str, Any]]:
        """The socket's server-made subscriptions, each with the offset of the last event
        queued to it (so an answer queued now follows everything before that offset)."""
        found = []
        for topic, subs in self._subs.items():
            subscription = subs.get(subscriber.id)
            if subscription is not None and subscription.pinned:
                offset = f"{self._epochs.get(topic) or '-'}:{subscription.start}"
                found.append({"topic": topic, "offset": offset})
        return sorted(found, key=lambda channel: channel["topic"])

    def _remove(self, topic: str, member: str) -> bool:
        subs = self._subs.get(topic, {})
        removed = subs.pop(member, None) is not None
        if removed:
            self.stats.subscriptions[kind(topic)] -= 1
        if not subs:
            self._subs.pop(topic, None)
            self._positions.pop(topic, None)
            self._epochs.pop(topic, None)
            self._published.pop(topic, None)
        return removed

    # -- reading ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                if self._recheck:
                    await self._check_epochs(tell_unchanged=True)
                    self._recheck = False
                events = await self.backend.read(dict(self._positions), BLOCK)
                for count, event in enumerate(events, 1):
                    await self._deliver(event)
                    if count % YIELD_EVERY == 0:
                        # let the writers drain now and then: a burst read at once must
                        # not overflow the queue of a client that reads fast
                        await asyncio.sleep(0)
            except BusUnavailable as error:
                if self.healthy:  # a new outage: check the streams once it is over
                    logger.warning("bus unavailable (%s); retrying", error)
                    self._recheck = True
                self.healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except Exception:
                # a bug must not silently stop delivery on this node: log, mark, go on
                logger.exception("hub reader failed; restarting it")
                self.healthy, self._recheck = False, True
                await asyncio.sleep(backoff)
                continue
            self.healthy, backoff = True, 0.1

    async def _deliver(self, event: Event) -> None:
        topic = event.topic
        if topic not in self._positions or event.seq <= self._positions[topic]:
            return  # unsubscribed meanwhile, or already delivered
        if event.seq > self._positions[topic] + 1:
            # this node fell more than the retention behind: the events in between were
            # trimmed before it read them, so its subscribers must refetch their state
            logger.warning(
                "topic %s: events %d..%d trimmed before delivery",
                topic,
                self._positions[topic] + 1,
                event.seq - 1,
            )
            self._tell(topic, recovered=False, reset=False)
        self._positions[topic] = event.seq
        if self._epochs.get(topic) is None:
            self._epochs[topic] = await self.backend.epoch(topic)
        frame = message_frame(topic, self._epochs[topic] or "-", event)
        subscriptions = list(self._subs.get(topic, {}).values())
        # the loop is the hot path: it counts only the (rare) sockets it does not send to
        skipped = 0
        for subscription in subscriptions:
            if subscription.pending is not None:
                subscription.pending.append(event)
                skipped += 1
            elif event.seq > subscription.start:
                subscription.start = event.seq
                if event.unless is None or not self._already_told(event, subscription.subscriber):
                    subscription.subscriber.enqueue(frame)
                else:
                    skipped += 1
            else:
                skipped += 1
        self._count_delivery(event, len(subscriptions) - skipped)

    def _count_delivery(self, event: Event, delivered: int) -> None:
        """One publication fanned out on this node: its deliveries and its lag, once."""
        stats, topic_kind = self.stats, kind(event.topic)
        stats.delivered[topic_kind] += delivered
        if event.at:  # (unknown for an entry written before the stamp)
            # another node's clock may be a little ahead of ours: no negative lag
            stats.lag[topic_kind].observe(max(time.time() - event.at, 0.0))

    async def _check_epochs(self, *, tell_unchanged: bool) -> None:
        """After an outage (or periodically): a stream that was reset cannot be resumed."""
        for topic in list(self._positions):
            epoch = await self.backend.epoch(topic)
            known = self._epochs.get(topic)
            if known is None and self._positions.get(topic) == 0:
                self._epochs[topic] = epoch  # a stream (re)born since: read from its start
                continue
            reset = epoch != known
            if reset:
                self._epochs[topic], self._positions[topic] = epoch, 0
            if reset or tell_unchanged:
                self._tell(topic, recovered=not reset, reset=reset)

    def _tell(self, topic: str, *, recovered: bool, reset: bool) -> None:
        position = self._positions.get(topic, 0)
        offset = f"{self._epochs.get(topic) or '-'}:{position}"
        frame = protocol.recovered_frame(topic, recovered, offset)
        subs = self._subs.get(topic, {})
        if not recovered:
            self.stats.unrecovered[READER] += len(subs)
        for subscription in subs.values():
            if reset:
                subscription.start = 0
            subscription.subscriber.enqueue(frame)

    # -- presence --------------------------------------------------------------------

    def _member(self, member: str) -> str:
        return f"{self.node}:{member}"

    async def _presence_join(self, topic: str, subscriber: Subscriber) -> None:
        info = _presence_info(subscriber)
        await self.backend.presence_set(topic, self._member(subscriber.id), info)

    async def _presence_leave(
        self, topic: str, member: str, unless_subscribed: bool = False
    ) -> None:
        if unless_subscribed and member in self._subs.get(topic, {}):
            return
        with contextlib.suppress(BusUnavailable):
            await self.backend.presence_remove(topic, self._member(member))

    async def presence(self, topic: str) -> list[dict[str, Any]]:
        """Who is subscribed to `topic` on any node: one entry per user, by sub."""
        try:
            entries = await self.backend.presence_list(topic)
        except BusUnavailable as error:
            raise bus_failure(error) from None
        users = {entry["sub"]: entry for entry in entries if entry.get("sub")}
        return [users[sub] for sub in sorted(users)]

    async def _heartbeat_loop(self) -> None:
        """Refresh this node's presence entries; a dead node's entries expire on their own."""
        while True:
            await asyncio.sleep(self._presence_ttl / 3)
            try:
                await self._refresh_presence()
                await self._check_epochs(tell_unchanged=False)
            except BusUnavailable:
                continue

    async def _refresh_presence(self) -> None:
        # a function of its own: its loop variables (the last subscriber, a socket that may
        # be long closed, with everything it holds) go when it returns, not at the next beat
        entries = [
            (topic, self._member(member), _presence_info(subscription.subscriber))
            for topic, subs in self._subs.items()
            for member, subscription in subs.items()
        ]
        await self.backend.presence_set_many(entries)

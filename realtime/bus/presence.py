"""Presence that pushes: `presence.join` and `presence.leave` events to the sockets that
asked for them (`topics.subscribe {presence: true}`), counted per user across all nodes.

No notification travels between nodes: every `WINDOW` seconds the node reads the presence
list of each topic its sockets watch (one read per topic, whatever the watchers) and sends
each watcher the difference to what it was last told. So a user's second tab is no second
join, a reconnect within the window is neither a leave nor a join (coalesced), a dead
node's users leave once their entries expire (the presence TTL), and a topic costs the
same however often its members come and go.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from realtime.exceptions import RequestError
from realtime.protocol import PRESENCE_JOIN, PRESENCE_LEAVE, encode_event

if TYPE_CHECKING:
    from realtime.bus.hub import Hub, Subscriber

logger = logging.getLogger("realtime.bus.presence")

WINDOW = 1.0  # seconds: how often the lists are compared (the coalescing window)
CAP = 1000  # members: a list longer than this is sent capped and then not followed
YIELD_EVERY = 16  # watchers told between turns given to the rest of the node


@dataclass(slots=True)
class _View:
    subscriber: Subscriber
    known: dict[str, dict[str, Any]] | None  # None: capped, no diffs


class PresenceFeed:
    """The node's presence watchers, by topic and socket."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._views: dict[str, dict[str, _View]] = {}
        # each topic's list at its last comparison (what its synced watchers were told)
        self._last: dict[str, dict[str, dict[str, Any]]] = {}
        # each topic's latest snapshot read, (when, the read), shared within a window
        self._fresh: dict[str, tuple[float, asyncio.Future[list[dict[str, Any]]]]] = {}

    async def watch(self, subscriber: Subscriber, topic: str) -> tuple[list[dict[str, Any]], bool]:
        """The snapshot (sorted by sub, at most CAP) and whether it was capped; diffs
        follow once the socket's subscription to `topic` is live."""
        members = await self._snapshot(topic)
        capped = len(members) > CAP
        known = None if capped else {member["sub"]: member for member in members}
        self._views.setdefault(topic, {})[subscriber.id] = _View(subscriber, known)
        return members[:CAP], capped

    async def _snapshot(self, topic: str) -> list[dict[str, Any]]:
        """The topic's list, read at most once per window for all the watches that start
        meanwhile (a burst of N watchers is N reads of N entries otherwise); what changed
        since comes as events at the next comparison."""
        loop = asyncio.get_running_loop()
        fresh = self._fresh.get(topic)
        if fresh is None or loop.time() - fresh[0] > WINDOW or fresh[1].cancelled():
            fresh = (loop.time(), asyncio.ensure_future(self._hub.presence(topic)))
            self._fresh[topic] = fresh
        try:
            return await asyncio.shield(fresh[1])
        except RequestError:
            self._fresh.pop(topic, None)  # not kept: the next watch reads again
            raise

    def forget(self, topic: str, member: str) -> None:
        views = self._views.get(topic)
        if views is not None and views.pop(member, None) is not None and not views:
            del self._views[topic]
            self._last.pop(topic, None)
            self._fresh.pop(topic, None)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WINDOW)
            for topic in list(self._views):
                try:
                    await self._compare(topic)
                except Exception:
                    # a bug must not silently stop presence events on this node
                    logger.exception("presence of %s not compared", topic)

    async def _compare(self, topic: str) -> None:
        try:
            members = await self._hub.presence(topic)
        except RequestError:
            return  # the bus is down: compared again once it is back
        now = {member["sub"]: member for member in members}
        last = self._last.get(topic)
        frames = _Frames(topic, now)
        # the watchers told up to the last comparison share one diff
        shared = frames.diff(last) if last is not None else []
        for count, (member, view) in enumerate(list(self._views.get(topic, {}).items()), 1):
            if count % YIELD_EVERY == 0:
                # after a burst each new watcher has a diff of its own (up to CAP frames):
                # let the node answer its sockets in between
                await asyncio.sleep(0)
            state = self._hub.subscription_state(topic, member)
            if state == "gone":
                self.forget(topic, member)  # unsubscribed while the snapshot was read
            elif state == "live" and view.known is not None:
                if len(now) > CAP:
                    view.known = None  # too many to follow: the snapshot said so
                    continue
                for frame in shared if view.known is last else frames.diff(view.known):
                    view.subscriber.enqueue(frame)
                view.known = now
        if topic in self._views:
            self._last[topic] = now


class _Frames:
    """The join and leave frames of one comparison, each built once however many
    watchers it goes to (a burst of joins is N events to each of N watchers)."""

    def __init__(self, topic: str, now: dict[str, dict[str, Any]]) -> None:
        self._topic, self._now = topic, now
        self._built: dict[tuple[str, str], bytes] = {}

    def diff(self, known: dict[str, dict[str, Any]]) -> list[bytes]:
        now = self._now
        joins = [self._frame(PRESENCE_JOIN, now[sub]) for sub in sorted(now.keys() - known.keys())]
        leaves = [
            self._frame(PRESENCE_LEAVE, known[sub]) for sub in sorted(known.keys() - now.keys())
        ]
        return joins + leaves

    def _frame(self, event: str, member: dict[str, Any]) -> bytes:
        key = (event, member["sub"])
        if key not in self._built:
            self._built[key] = encode_event(event, member, topic=self._topic)
        return self._built[key]

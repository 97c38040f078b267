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

    async def watch(self, subscriber: Subscriber, topic: str) -> tuple[list[dict[str, Any]], bool]:
        """The snapshot (sorted by sub, at most CAP) and whether it was capped; diffs
        follow once the socket's subscription to `topic` is live."""
        members = await self._hub.presence(topic)
        capped = len(members) > CAP
        known = None if capped else {member["sub"]: member for member in members}
        self._views.setdefault(topic, {})[subscriber.id] = _View(subscriber, known)
        return members[:CAP], capped

    def forget(self, topic: str, member: str) -> None:
        views = self._views.get(topic)
        if views is not None and views.pop(member, None) is not None and not views:
            del self._views[topic]
            self._last.pop(topic, None)

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
        # the watchers told up to the last comparison share one diff, its frames built once
        shared = _frames(topic, last, now) if last is not None else []
        for member, view in list(self._views.get(topic, {}).items()):
            state = self._hub.subscription_state(topic, member)
            if state == "gone":
                self.forget(topic, member)  # unsubscribed while the snapshot was read
            elif state == "live" and view.known is not None:
                if len(now) > CAP:
                    view.known = None  # too many to follow: the snapshot said so
                    continue
                frames = shared if view.known is last else _frames(topic, view.known, now)
                for frame in frames:
                    view.subscriber.enqueue(frame)
                view.known = now
        if topic in self._views:
            self._last[topic] = now


def _frames(topic: str, known: dict[str, Any], now: dict[str, Any]) -> list[bytes]:
    joins = [
        encode_event(PRESENCE_JOIN, now[sub], topic=topic)
        for sub in sorted(now.keys() - known.keys())
    ]
    leaves = [
        encode_event(PRESENCE_LEAVE, known[sub], topic=topic)
        for sub in sorted(known.keys() - now.keys())
    ]
    return joins + leaves

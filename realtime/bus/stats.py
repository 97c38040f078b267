"""What the hub counts for the metrics: plain integers on the event-loop thread.

The delivery path is hot (one publication, thousands of sockets), so nothing here is
counted per socket that can be counted per publication: a fan-out adds its number of
deliveries once, and the publish-to-deliver lag is observed once per publication and
node. realtime.metrics turns these counts into Prometheus families at a scrape (or folds
them into its multiprocess files, under `realtime serve --workers N`).

Labels are bounded: a topic is reported by its `kind` only, never by its name.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping

from realtime import protocol

TOPIC, JOB, PERSONAL = "topic", "job", "personal"
KINDS = (TOPIC, JOB, PERSONAL)
# where a `recovered: false` was told: the answer to a subscribe with `since`, or a
# notice to live subscribers (this node's reader found a gap, or the stream was reset)
SUBSCRIBE, READER = "subscribe", "reader"
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


def kind(topic: str) -> str:
    """`job` (job:<id>), `personal` (user.<tenant>.<sub>) or `topic` (any other)."""
    if topic.startswith(protocol.JOB_TOPIC_PREFIX):
        return JOB
    if topic.startswith(protocol.PERSONAL_PREFIX):
        return PERSONAL
    return TOPIC


class Buckets:
    """A histogram's counts per bucket (the last one: over the highest bound) and sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class BusStats:
    """The counts of one hub (one per process: a server node's, or a worker's)."""

    def __init__(self) -> None:
        self.published = dict.fromkeys(KINDS, 0)
        self.delivered = dict.fromkeys(KINDS, 0)  # frames of publications queued to sockets
        self.replayed = dict.fromkeys(KINDS, 0)  # history frames sent on a subscribe
        self.subscriptions = dict.fromkeys(KINDS, 0)  # open now, on this node
        self.unrecovered = dict.fromkeys((SUBSCRIBE, READER), 0)
        self.lag = {name: Buckets(LAG_BUCKETS) for name in KINDS}
        # the backend's failed calls by operation (`Backend.failures`), read at a scrape
        self.failures: Callable[[], Mapping[str, int]] = dict

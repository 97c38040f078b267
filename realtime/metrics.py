"""Prometheus metrics, on a registry owned by the app (never the global default).

Per-request figures are plain counters on the event-loop thread, turned into Prometheus
families only when /metrics is scraped: prometheus_client's `labels().inc()` takes locks
and costs more than the rest of a request's bookkeeping.

Under `realtime serve --workers N` (PROMETHEUS_MULTIPROC_DIR set, prometheus-client's
multiprocess mode) each process writes its metrics to files there and a scrape, whichever
process takes it, answers the sum of all of them. The per-request counters are then folded
into real Counter/Histogram children every sweep (about a second) and before a scrape, so
the hot path stays a plain addition in both modes.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from realtime.bus.stats import LAG_BUCKETS, Buckets, BusStats
from realtime.protocol import JOB_FINAL_STATES

JOB_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
ATTEMPT_BUCKETS = (1, 2, 3, 5, 10)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
FIRST_BUCKET = LATENCY_BUCKETS[0]


class _Latency:
    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class Tally:
    """One (package, status, transport) counter and its package's latency histogram."""

    __slots__ = ("count", "latency")

    def __init__(self, latency: _Latency) -> None:
        self.count = 0
        self.latency = latency

    def add(self, seconds: float) -> None:
        self.count += 1
        latency = self.latency
        # most answers fall in the first bucket: no search for them
        index = 0 if seconds <= FIRST_BUCKET else bisect.bisect_left(LATENCY_BUCKETS, seconds)
        latency.buckets[index] += 1
        latency.total += seconds


class RequestStats(Collector):
    """Requests by (package, status, transport) and latency by package."""

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str, str], Tally] = {}
        self.latency: defaultdict[str, _Latency] = defaultdict(_Latency)

    def tally(self, package: str, status: str, transport: str) -> Tally:
        """The counter to `add` to; the router keeps the OK ones at hand (hot path)."""
        key = (package, status, transport)
        found = self.tallies.get(key)
        if found is None:
            found = self.tallies[key] = Tally(self.latency[package])
        return found

    def record(self, package: str, status: str, transport: str, seconds: float) -> None:
        self.tally(package, status, transport).add(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "realtime_requests",
            "Package calls answered",
            labels=["package", "status", "transport"],
        )
        for labels, tally in list(self.tallies.items()):
            requests.add_metric(list(labels), tally.count)
        yield requests
        histogram = HistogramMetricFamily(
            "realtime_request_seconds",
            "Package call latency (handler included)",
            labels=["package"],
        )
        for package, latency in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), latency.buckets, strict=True):
                cumulative += count
                # the bound as Histogram writes it ("1.0", "+Inf")
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            histogram.add_metric([package], buckets, latency.total)
        yield histogram


class SocketTraffic(Collector):
    """Frames received and sent and bytes sent by the sockets of this process, read at
    scrape time from the counts each socket keeps anyway (nothing more on the hot path)
    plus those of the sockets that have closed."""

    NAMES = (
        ("realtime_frames_received", "Text frames received on sockets (after authentication)"),
        ("realtime_frames_sent", "Text frames sent on sockets"),
        ("realtime_sent_bytes", "Bytes of text frames sent on sockets (UTF-8)"),
    )

    def __init__(self) -> None:
        self.live: Callable[[], Iterable[Any]] = tuple
        self.closed = [0, 0, 0]

    def count(self, connection: Any) -> tuple[int, int, int]:
        return connection.frames_received, connection.outbox.sent, connection.outbox.sent_bytes

    def ended(self, connection: Any) -> None:
        for index, value in enumerate(self.count(connection)):
            self.closed[index] += value

    def totals(self) -> list[int]:
        totals = list(self.closed)
        for connection in list(self.live()):
            for index, value in enumerate(self.count(connection)):
                totals[index] += value
        return totals

    def collect(self) -> Iterator[Metric]:
        for (name, documentation), value in zip(self.NAMES, self.totals(), strict=True):
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], value)
            yield family


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """A histogram's buckets as the text format writes them (cumulative, "1.0", "+Inf")."""
    cumulative, buckets = 0, list[tuple[str, float]]()
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
    return buckets


# (name, help, label) of BusStats' counters, by attribute
BUS_COUNTERS = {
    "published": ("realtime_bus_publications", "Publications on the bus, by topic kind", "kind"),
    "delivered": (
        "realtime_bus_deliveries",
        "Frames of publications queued to this node's sockets, by topic kind",
        "kind",
    ),
    "replayed": (
        "realtime_bus_replayed",
        "History frames sent to sockets that subscribed with since, by topic kind",
        "kind",
    ),
    "unrecovered": (
        "realtime_bus_unrecovered",
        "recovered: false told to sockets (history lost past their offset), by where",
        "at",
    ),
}
BUS_LAG = ("realtime_bus_lag_seconds", "Publish-to-deliver lag, once per publication and node")
BUS_ERRORS = ("realtime_bus_errors", "Bus calls that failed (Redis unreachable or timed out)")
SUBSCRIPTIONS = ("realtime_subscriptions", "Open topic subscriptions on this node, by kind")


class BusCollector(Collector):
    """The hub's counts (realtime.bus.stats), read at a scrape."""

    def __init__(self, stats: BusStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        for attribute, (name, documentation, label) in BUS_COUNTERS.items():
            counter = CounterMetricFamily(name, documentation, labels=[label])
            for value, count in list(getattr(stats, attribute).items()):
                counter.add_metric([value], count)
            yield counter
        lag = HistogramMetricFamily(*BUS_LAG, labels=["kind"])
        for value, buckets in list(stats.lag.items()):
            lag.add_metric([value], _cumulative(buckets.bounds, buckets.counts), buckets.total)
        yield lag
        errors = CounterMetricFamily(*BUS_ERRORS, labels=["operation"])
        for operation, count in list(stats.failures().items()):
            errors.add_metric([operation], count)
        yield errors
        gauge = GaugeMetricFamily(*SUBSCRIPTIONS, labels=["kind"])
        for value, count in list(stats.subscriptions.items()):
            gauge.add_metric([value], count)
        yield gauge


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class _Folded:
    """The per-request tallies as multiprocess Counter/Histogram children: what each
    tally had when last folded, so each fold adds only what came since."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "realtime_requests",
            "Package calls answered",
            ["package", "status", "transport"],
            registry=registry,
        )
        self.latency = Histogram(
            "realtime_request_seconds",
            "Package call latency (handler included)",
            ["package"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.counts: dict[tuple[str, str, str], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.totals: dict[str, float] = {}
        names = SocketTraffic.NAMES
        self.traffic = [Counter(name, text, registry=registry) for name, text in names]
        self.traffic_folded = [0, 0, 0]
        self.bus = _FoldedBus(registry)

    def fold_traffic(self, traffic: SocketTraffic) -> None:
        for index, total in enumerate(traffic.totals()):
            if total > self.traffic_folded[index]:
                self.traffic[index].inc(total - self.traffic_folded[index])
                self.traffic_folded[index] = total

    def fold(self, stats: RequestStats) -> None:
        for key, tally in list(stats.tallies.items()):
            delta = tally.count - self.counts.get(key, 0)
            if delta:
                self.requests.labels(*key).inc(delta)
                self.counts[key] = tally.count
        for package, latency in list(stats.latency.items()):
            self._fold_latency(package, latency)

    def _fold_latency(self, package: str, latency: _Latency) -> None:
        before = self.buckets.setdefault(package, [0] * len(latency.buckets))
        child = self.latency.labels(package)
        # prometheus-client has no public "add n to a bucket": its children's value
        # objects are what observe() itself increments (tests/test_metrics.py checks the
        # exposition against the in-process one)
        for index, count in enumerate(latency.buckets):
            if count != before[index]:
                child._buckets[index].inc(count - before[index])
                before[index] = count
        total = latency.total - self.totals.get(package, 0.0)
        if total:
            child._sum.inc(total)
            self.totals[package] = latency.total


class _FoldedBus:
    """BusStats as multiprocess children: counters by their delta since the last fold,
    the lag as histogram buckets, the subscriptions as a gauge summed over live
    processes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = {
            attribute: Counter(name, text, [label], registry=registry)
            for attribute, (name, text, label) in BUS_COUNTERS.items()
        }
        self.errors = Counter(*BUS_ERRORS, ["operation"], registry=registry)
        self.lag = Histogram(*BUS_LAG, ["kind"], buckets=LAG_BUCKETS, registry=registry)
        self.subscriptions = Gauge(
            *SUBSCRIPTIONS, ["kind"], registry=registry, multiprocess_mode="livesum"
        )
        self.seen: dict[tuple[str, str], float] = {}

    def fold(self, stats: BusStats) -> None:
        for attribute, counter in self.counters.items():
            self._add(counter, attribute, getattr(stats, attribute))
        self._add(self.errors, "errors", stats.failures())
        for value, buckets in stats.lag.items():
            self._fold_lag(value, buckets)
        for value, count in stats.subscriptions.items():
            self.subscriptions.labels(value).set(count)

    def _add(self, counter: Counter, attribute: str, counts: Mapping[str, int]) -> None:
        for value, count in list(counts.items()):
            child = counter.labels(value)  # every label's series, 0 included, as in-process
            delta = count - self.seen.get((attribute, value), 0)
            if delta:
                child.inc(delta)
                self.seen[attribute, value] = count

    def _fold_lag(self, value: str, buckets: Buckets) -> None:
        child = self.lag.labels(value)
        # as _Folded._fold_latency: add to the children's own bucket values
        for index, count in enumerate(buckets.counts):
            delta = count - self.seen.get((f"lag{index}", value), 0)
            if delta:
                child._buckets[index].inc(delta)
                self.seen[f"lag{index}", value] = count
        total = buckets.total - self.seen.get(("lag", value), 0.0)
        if total:
            child._sum.inc(total)
            self.seen["lag", value] = buckets.total


class Metrics:
    def __init__(self, multiprocess: bool | None = None) -> None:
        """`multiprocess`: whether to write to and scrape PROMETHEUS_MULTIPROC_DIR
        (default: whether it is set)."""
        if multiprocess is None:
            multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self.registry = CollectorRegistry()
        self.requests = RequestStats()
        self.traffic = SocketTraffic()
        self.bus = BusStats()  # the hub's (realtime.bus.stats)
        self._folded: _Folded | None = None
        if multiprocess:
            from prometheus_client import multiprocess as mp

            self._folded = _Folded(self.registry)
            self._scrape = CollectorRegistry()
            mp.MultiProcessCollector(self._scrape)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(self.requests)
            self.registry.register(self.traffic)
            self.registry.register(BusCollector(self.bus))
            self._scrape = self.registry
        self.connections = Gauge(
            "realtime_connections",
            "Open WebSocket connections",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.sockets_opened = Counter(
            "realtime_sockets_opened", "WebSocket connections accepted", registry=self.registry
        )
        self.closes = Counter(
            "realtime_socket_closes",
            "Sockets closed by the server, by close code",
            ["code"],
            registry=self.registry,
        )
        self.http_refused = Counter(
            "realtime_http_refused",
            "Connections refused before their request head was complete, by reason",
            ["reason"],
            registry=self.registry,
        )
        self._job_metrics()
        self.limiter_fallbacks = Counter(
            "realtime_rate_limit_fallbacks",
            "Times the shared (Redis) rate limits failed and this node's own took over",
            registry=self.registry,
        )
        # per-user socket cap and sessions (realtime.sessions)
        self.socket_cap_rejections = Counter(
            "realtime_socket_cap_rejections",
            "Sockets closed (4409) because their user held REALTIME_MAX_SOCKETS_PER_USER",
            registry=self.registry,
        )
        self.socket_cap_fallbacks = Counter(
            "realtime_socket_cap_fallbacks",
            "Sockets admitted on this node's own count of their user's sockets (Redis failed)",
            registry=self.registry,
        )
        self.inline_overruns = Counter(
            "realtime_inline_overruns",
            "Calls of inline=True handlers that held the event loop over the inline budget",
            ["package"],
            registry=self.registry,
        )

    def _job_metrics(self) -> None:
        # labels: the task's name (the tasks registered in code: a bounded set)
        self.jobs_queued = Counter(
            "realtime_jobs_queued", "Jobs queued", ["task"], registry=self.registry
        )
        self.jobs_started = Counter(
            "realtime_jobs_started", "Job runs started", ["task"], registry=self.registry
        )
        self.jobs_finished = Counter(
            "realtime_jobs_finished",
            "Job runs finished, by outcome (ok: returned; error: raised)",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "realtime_job_seconds",
            "Job run duration",
            ["task"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        # gauges of the shared queue: every process reads the same stream, so the most
        # recent reading is the answer, not their sum
        self.job_queue_length = Gauge(
            "realtime_job_queue_length",
            "Entries in the job queue's Redis stream",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.job_queue_pending = Gauge(
            "realtime_job_queue_pending",
            "Jobs delivered to a worker and not yet acknowledged",
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.job_reclaims = Counter(
            "realtime_job_reclaims",
            "Jobs taken over from a worker that stopped (their claim timed out)",
            registry=self.registry,
        )
        # counted by the one writer that moves a job to its final state (the run, a
        # cancel, the sweep): where it ended, not where it ran
        self.jobs_ended = Counter(
            "realtime_jobs_ended",
            "Jobs that reached a final state (SUCCESS, FAILURE, CANCELLED), by state",
            ["state"],
            registry=self.registry,
        )
        self.job_attempts = Histogram(
            "realtime_job_attempts",
            "Runs a job took, observed when a run ended it, by final state",
            ["state"],
            buckets=ATTEMPT_BUCKETS,
            registry=self.registry,
        )
        for state in JOB_FINAL_STATES:  # every state's series from the start (rate() of 0)
            self.jobs_ended.labels(state)

    def job_ended(self, state: str, attempts: int = 0) -> None:
        """A job reached `state` (final); `attempts`: the runs it took, when a run ended
        it (0: ended by a cancel or the sweep, not observed)."""
        self.jobs_ended.labels(state).inc()
        if attempts:
            self.job_attempts.labels(state).observe(attempts)

    def fold(self) -> None:
        """Multiprocess mode: write what the tallies counted since the last fold."""
        if self._folded is not None:
            self._folded.fold(self.requests)
            self._folded.fold_traffic(self.traffic)
            self._folded.bus.fold(self.bus)

    def render(self) -> bytes:
        self.fold()
        return generate_latest(self._scrape)

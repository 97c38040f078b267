"""Prometheus metrics, on a registry owned by the app (never the global default).

Per-request figures are plain counters on the event-loop thread, turned into Prometheus
families only when /metrics is scraped: prometheus_client's `labels().inc()` takes locks
and costs more than the rest of a request's bookkeeping.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            histogram.add_metric([package], buckets, latency.total)
        yield histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.connections = Gauge(
            "realtime_connections", "Open WebSocket connections", registry=self.registry
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
        self.inline_overruns = Counter(
            "realtime_inline_overruns",
            "Calls of inline=True handlers that held the event loop over the inline budget",
            ["package"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

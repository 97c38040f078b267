"""Prometheus metrics, on a registry owned by the app (never the global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "realtime_requests",
            "Package calls answered",
            ["package", "status", "transport"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "realtime_request_seconds",
            "Package call latency (handler included)",
            ["package"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connections = Gauge(
            "realtime_connections", "Open WebSocket connections", registry=self.registry
        )
        self.closes = Counter(
            "realtime_socket_closes",
            "Sockets closed by the server, by close code",
            ["code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""One measured run: connect, subscribe, publish, count deliveries, drain, close.

Two kinds:

- `fanout`: closed loop. The publisher keeps `window` publications undelivered at most:
  it publishes the next one as soon as the subscribers together have received all but
  `window - 1` publications' worth of deliveries. So the server is never idle and never
  flooded (no queue grows, nothing is dropped), and the figure is the rate it sustains.
- `paced`: the publisher sends `rate` publications per second on its own clock (possibly
  on another node than the subscribers).

Every publication carries its number `i` and its send time `t` (`time.perf_counter_ns`
of this process, which also receives, so the clocks agree). Publish-to-deliver latency
is taken on the sampled subscribers, which also check that they see 1, 2, 3, ...
(`skipped`: numbers jumped over; `disorder`: duplicates or steps back): realtime's sequence numbers from the delivered `offset`
(the bus's order, which may differ from the order the publisher sent concurrent
publications in), the publisher's `i` for the baselines. Bounded: a connect timeout, a fixed window, a drain
timeout, and a stall guard that ends a run whose deliveries stop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from picows import ws_connect

from tests.bench.common.figures import percentile
from tests.bench.common.probes import Probe, SelfCPU
from tests.bench.fanout.clients import PUBLISHER, SUBSCRIBER, Dialect, Peer

CONNECT_BATCH = 100


@dataclass(frozen=True)
class Options:
    subscribers: int = 1000
    warmup: float = 2.0
    duration: float = 10.0
    window: int = 16  # closed loop: publications in flight at most
    rate: float = 0.0  # paced: publications per second (0: closed loop)
    payload_bytes: int = 100  # of the published `data` as JSON
    sample_every: int = 50  # every n-th subscriber parses its deliveries
    connect_timeout: float = 60.0
    drain_timeout: float = 5.0  # the drain ends after this long without a delivery
    stall_timeout: float = 5.0
    max_publications: int = 10_000_000


@dataclass
class Result:
    system: str
    round: int
    subscribers: int  # subscribed and ready
    failed: int  # sockets that did not connect or subscribe
    window_s: float
    publications: int  # published in the window
    deliveries: int  # received in the window, all subscribers together
    lost: int  # published * subscribers - received, after the drain (undelivered)
    skipped: int  # publications a sampled subscriber never saw (its numbers jumped)
    disorder: int  # sampled deliveries duplicated or going backwards
    errors: int  # error answers and unexpected frames
    stalled: bool
    client_cpu: float
    probes: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latencies_ms.sort()

    @property
    def deliveries_per_s(self) -> float:
        return self.deliveries / self.window_s if self.window_s > 0 else 0.0

    @property
    def publications_per_s(self) -> float:
        return self.publications / self.window_s if self.window_s > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def server_us_per_delivery(self, probe: str = "server CPU") -> float:
        share = self.probes.get(probe)
        if share is None or not self.deliveries:
            return float("nan")
        return share * self.window_s / self.deliveries * 1e6

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        return data | {
            "deliveries_per_s": self.deliveries_per_s,
            "publications_per_s": self.publications_per_s,
            "p50_ms": self.latency(50),
            "p99_ms": self.latency(99),
            "max_ms": self.latency(100),
            "latency_samples": len(self.latencies_ms),
            "server_us_per_delivery": self.server_us_per_delivery(),
        }


class _Run:
    def __init__(self, dialect: Dialect, options: Options) -> None:
        self.dialect = dialect
        self.options = options
        self.subscribers = 0
        self.window = options.window
        self.publisher: Peer | None = None
        self.published = 0
        self.delivered = 0
        self.next_at = math.inf  # deliveries after which the next publication may go
        self.sending = False
        self.recording = False
        self.latencies: list[int] = []
        self.stalls: list[float] = []  # how late the client's 1 ms ticks woke (recording)
        pad = options.payload_bytes - len(orjson.dumps(self._data(100_000, "")))
        self.pad = "x" * max(0, pad)

    @staticmethod
    def _data(number: int, pad: str) -> dict[str, Any]:
        return {"i": number, "t": time.perf_counter_ns(), "s": pad}

    def publish_one(self) -> None:
        assert self.publisher is not None
        self.published += 1
        data = orjson.dumps(self._data(self.published, self.pad))
        self.publisher.send(self.dialect.publish_frame(data))

    def publish_more(self) -> None:
        """Closed loop: top the publications in flight up to `window`."""
        while self.sending and self.delivered >= self.next_at:
            if self.published >= self.options.max_publications:
                self.sending = False
                return
            self.publish_one()
            self.next_at = (self.published + 1 - self.window) * self.subscribers

    def on_delivery(self, peer: Peer, payload: bytes) -> None:
        peer.count += 1
        self.delivered += 1
        if peer.sampled:
            now = time.perf_counter_ns()
            number, data = self.dialect.delivery(payload)
            if number > peer.last + 1:
                peer.skipped += number - peer.last - 1
            elif number <= peer.last:
                peer.disorder += 1
            peer.last = number
            if self.recording:
                self.latencies.append(now - data["t"])
        if self.delivered >= self.next_at:
            self.publish_more()

    async def pace(self, rate: float) -> None:
        """Paced: publication n goes at start + n / rate (a late timer sends a few at once)."""
        started = time.perf_counter()
        interval = 1 / rate
        while self.sending:
            due = int((time.perf_counter() - started) * rate) + 1
            while self.sending and self.published < due:
                if self.published >= self.options.max_publications:
                    self.sending = False
                    break
                self.publish_one()
            await asyncio.sleep(interval)


async def _connect(run: _Run, url: str, role: str, headers: Mapping[str, str], index: int) -> Peer:
    sampled = role == SUBSCRIBER and index % max(1, run.options.sample_every) == 0
    peer: Peer | None = None

    def factory() -> Peer:
        nonlocal peer
        peer = Peer(run.dialect, role, run.on_delivery, sampled)
        return peer

    await ws_connect(factory, url, extra_headers=dict(headers), websocket_handshake_timeout=30)
    assert peer is not None
    await peer.ready
    return peer


async def _connect_all(
    run: _Run, base: str, role: str, count: int, timeout: float
) -> tuple[list[Peer], list[str]]:
    url, headers = run.dialect.url(base, role), run.dialect.headers(role)
    peers: list[Peer] = []
    failures: list[str] = []
    async with asyncio.timeout(timeout):
        for first in range(0, count, CONNECT_BATCH):
            batch = range(first, min(count, first + CONNECT_BATCH))
            outcomes = await asyncio.gather(
                *(_connect(run, url, role, headers, i) for i in batch), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, Peer):
                    peers.append(outcome)
                else:
                    failures.append(repr(outcome))
    return peers, failures


async def run_once(
    dialect: Dialect,
    options: Options,
    *,
    subscribe_to: str,
    publish_to: str,
    probes: Mapping[str, Probe],
    round_: int = 0,
    system: str | None = None,
) -> Result:
    """Subscribers on `subscribe_to`, the publisher on `publish_to` (ws://host:port)."""
    run = _Run(dialect, options)
    subscribers, failures = await _connect_all(
        run, subscribe_to, SUBSCRIBER, options.subscribers, options.connect_timeout
    )
    publishers, publisher_failures = await _connect_all(
        run, publish_to, PUBLISHER, 1, options.connect_timeout
    )
    if not publishers or not subscribers:
        raise RuntimeError(f"could not connect: {(publisher_failures + failures)[:3]}")
    run.publisher = publishers[0]
    run.subscribers = len(subscribers)
    run.sending = True
    pacer: asyncio.Task[None] | None = None
    if options.rate > 0:
        pacer = asyncio.create_task(run.pace(options.rate))
    else:
        run.next_at = 0
        run.publish_more()

    # paced runs only: in a closed loop the client's own CPU is already the limit's neighbour
    ticker = asyncio.create_task(_tick(run)) if options.rate > 0 else None
    stalled = await _watch(run, options.warmup)
    client_cpu = SelfCPU()
    client_cpu.start()
    for probe in probes.values():
        probe.start()
    published0, delivered0 = run.published, run.delivered
    run.recording = True
    started = time.perf_counter()
    stalled = stalled or await _watch(run, options.duration)
    run.recording = False
    if ticker is not None:
        ticker.cancel()
    window = time.perf_counter() - started
    published, delivered = run.published - published0, run.delivered - delivered0
    own = client_cpu.stop()
    measured = {name: probe.stop() for name, probe in probes.items()}
    run.sending = False
    if pacer is not None:
        await pacer

    expected = run.published * run.subscribers
    drained = await _drain(run, expected, options.drain_timeout)
    sampled = [p for p in subscribers if p.sampled]
    closed = sum(p.closed for p in subscribers)  # by the server (e.g. 1013), before ours
    for peer in (*subscribers, run.publisher):
        peer.close()
    await asyncio.sleep(0.2)
    return Result(
        system=system or dialect.name,
        round=round_,
        subscribers=run.subscribers,
        failed=len(failures),
        window_s=window,
        publications=published,
        deliveries=delivered,
        lost=expected - run.delivered,
        skipped=sum(p.skipped for p in sampled),
        disorder=sum(p.disorder for p in sampled),
        errors=sum(p.errors for p in (*subscribers, run.publisher)),
        stalled=stalled,
        client_cpu=own,
        probes=measured,
        latencies_ms=[ns / 1e6 for ns in run.latencies],
        notes={
            "total_publications": run.published,
            "drain_s": drained,
            "sampled_subscribers": len(sampled),
            "min_per_subscriber": min(p.count for p in subscribers),
            "max_per_subscriber": max(p.count for p in subscribers),
            "closed_by_server": closed,
            "failures": failures[:3],
            "window": options.window if options.rate <= 0 else None,
            "rate": options.rate or None,
            "client_stall_max_ms": 1e3 * max(run.stalls, default=0.0),
        },
    )


async def _tick(run: _Run) -> None:
    """The load generator's own stalls: a 1 ms sleep that wakes late means this process
    (which stamps and receives) could not run, and every latency it measured meanwhile
    includes that wait."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        if run.recording:
            run.stalls.append(time.perf_counter() - before - 0.001)


async def _drain(run: _Run, expected: int, idle: float, cap: float = 120.0) -> float:
    """Wait for the deliveries still due: until all arrived, or none for `idle` seconds."""
    started = time.perf_counter()
    last, last_change = run.delivered, started
    while run.delivered < expected:
        await asyncio.sleep(0.01)
        now = time.perf_counter()
        if run.delivered != last:
            last, last_change = run.delivered, now
        elif now - last_change > idle or now - started > cap:
            break
    return time.perf_counter() - started


async def _watch(run: _Run, seconds: float) -> bool:
    """Sleep `seconds`, checking every 0.1 s that deliveries progress; True if stalled."""
    deadline = time.perf_counter() + seconds
    last, last_change = run.delivered, time.perf_counter()
    while (now := time.perf_counter()) < deadline:
        await asyncio.sleep(min(0.1, deadline - now))
        if run.delivered != last:
            last, last_change = run.delivered, time.perf_counter()
        elif time.perf_counter() - last_change > run.options.stall_timeout:
            run.sending = False
            return True
    return False

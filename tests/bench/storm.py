"""Reconnect storm (issue 15): thousands of sockets reconnect and resume at once.

    python -m tests.bench.storm [--sockets 5000] [--jitter 0.5] [--missed 5] [--bus redis]

One `realtime serve` (the embedded default, on the Redis bus unless `--bus memory`;
pinned to CPU 0, every thread of it) and, in this process on CPU 1, `--sockets` picows
sockets spread over `--users` users, each subscribed to `broadcast`. Then the storm:

1. every socket drops at once (its TCP connection closed, no close frame: a network
   blip, a load balancer failing over), remembering the last offset it saw;
2. an operator publishes `--missed` messages on `broadcast` while they are away;
3. each socket reconnects after a uniform random delay in [0, `--jitter`] s (what
   realtime.js's full-jitter backoff does on its first attempt: [0, 500 ms)) and
   resubscribes with `since` = its last offset.

A socket has resumed when its subscribe answered `recovered: true` and every missed
message arrived, each exactly once, in order. Printed: the time from the drop until
50%, 99% and all sockets resumed (target: all within 2 s), what failed and why, messages
lost or duplicated (must be 0), the server's CPU and RSS, and the latency of a control
client that stays connected (its own process, an echo every 10 ms; target p99 under
20 ms during the storm: from the drop until the last socket resumed). Redis database
`--redis-db` (default 12) is flushed first. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tests.bench.common import machine
from tests.bench.common.figures import percentile
from tests.bench.common.probes import cpu_by_thread, cpu_seconds, memory
from tests.bench.common.runner import dev_tokens, event_loop, pin_self
from tests.nodes import node

TOPIC = "broadcast"
MESSAGE = b'{"event":"message"'
CONNECT_BATCH = 50  # sockets connected at once before the storm (not measured)
CONNECT_TRIES = 3  # before the storm, an overloaded server may answer UNAVAILABLE: again


@dataclass
class Storm:
    """What every socket shares: the missed offsets and the clock of the drop."""

    missed: list[str] = field(default_factory=list)
    dropped_at: float = 0.0
    resumed: list[float] = field(default_factory=list)  # seconds after the drop
    failures: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    not_recovered: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def finish(self, seconds: float | None, failure: str = "") -> None:
        if seconds is None:
            self.failures[failure] += 1
        else:
            self.resumed.append(seconds)
        if len(self.resumed) + sum(self.failures.values()) >= self.expected:
            self.done.set()


class Resumer(WSListener):  # type: ignore[misc]
    """One subscriber of `broadcast`: subscribes (with `since` once it has an offset),
    keeps the last offset it saw, and after a reconnect checks what it was sent again."""

    def __init__(self, storm: Storm, offset: str | None) -> None:
        super().__init__()
        self.storm = storm
        self.offset = offset  # the last offset seen
        self.resuming = offset is not None
        self.received: list[str] = []  # offsets delivered since this connection opened
        self.recovered = False
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: WSTransport | None = None
        self.finished = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        data: dict[str, Any] = {"topic": TOPIC}
        if self.offset is not None:
            data["since"] = self.offset
        request = {"pkg_id": 30, "req_id": "s", "data": data}
        transport.send(WSMsgType.TEXT, orjson.dumps(request))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            self._fail(f"closed {frame.get_close_code()}")
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        payload = frame.get_payload_as_bytes()
        if payload.startswith(MESSAGE):
            offset = orjson.loads(payload)["offset"]
            self.received.append(offset)
            self.offset = offset
        else:
            self._answer(orjson.loads(payload))
        self._check()

    def _answer(self, answer: dict[str, Any]) -> None:
        if answer.get("req_id") != "s":
            return
        if answer.get("status_code") != 0:
            error = (answer.get("error") or {}).get("message", "")
            self._fail(f"subscribe status {answer.get('status_code')}: {error[:80]}")
            return
        data = answer.get("data") or {}
        self.recovered = bool(data.get("recovered"))
        if self.offset is None:
            self.offset = data.get("offset")
        if not self.subscribed.done():
            self.subscribed.set_result(None)

    def _check(self) -> None:
        """Resumed once the subscribe answered and every missed offset arrived."""
        storm = self.storm
        if not self.resuming or self.finished or not self.subscribed.done():
            return
        if len(self.received) < len(storm.missed):
            return
        self.finished = True
        got = self.received[: len(storm.missed)]
        storm.lost += len(set(storm.missed) - set(got))
        storm.duplicated += len(got) - len(set(got))
        storm.not_recovered += not self.recovered
        storm.finish(time.monotonic() - storm.dropped_at)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._fail("disconnected")

    def _fail(self, reason: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(reason))
            self.subscribed.exception()  # retrieved here: the storm counts it
        if self.resuming and not self.finished:
            self.finished = True
            self.storm.finish(None, reason)

    def drop(self) -> None:
        """The network goes: the TCP connection closes with no close frame."""
        if self.transport is not None:
            self.transport.underlying_transport.abort()


async def connect(
    url: str, token: str, storm: Storm, offset: str | None, made: list[Resumer] | None = None
) -> Resumer:
    listener: Resumer | None = None

    def factory() -> Resumer:
        nonlocal listener
        listener = Resumer(storm, offset)
        if made is not None:
            made.append(listener)
        return listener

    headers = {"Authorization": f"Bearer {token}"}
    await ws_connect(factory, url, extra_headers=headers, websocket_handshake_timeout=30)
    assert listener is not None
    await listener.subscribed
    return listener


async def settled(url: str, token: str, storm: Storm) -> Resumer:
    for _ in range(CONNECT_TRIES - 1):
        with contextlib.suppress(ConnectionError):
            return await connect(url, token, storm, None)
        await asyncio.sleep(0.5)
    return await connect(url, token, storm, None)


async def crowd(url: str, tokens: list[str], count: int) -> list[Resumer]:
    """`count` subscribed sockets, connected in batches (before the storm, not measured)."""
    peers: list[Resumer] = []
    storm = Storm()
    for first in range(0, count, CONNECT_BATCH):
        batch = range(first, min(count, first + CONNECT_BATCH))
        peers += await asyncio.gather(
            *(settled(url, tokens[i % len(tokens)], storm) for i in batch)
        )
    return peers


async def publish(url: str, token: str, count: int) -> list[str]:
    """`count` messages on `broadcast` from an operator's socket; their offsets."""
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    class Publisher(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.TEXT:
                answers.put_nowait(orjson.loads(frame.get_payload_as_bytes()))

    headers = {"Authorization": f"Bearer {token}"}
    transport, _ = await ws_connect(Publisher, url, extra_headers=headers)
    offsets = []
    for n in range(count):
        data = {"topic": TOPIC, "data": {"n": n, "text": "missed while away"}}
        transport.send(WSMsgType.TEXT, orjson.dumps({"pkg_id": 32, "req_id": str(n), "data": data}))
        answer = await asyncio.wait_for(answers.get(), 120)  # the drop may keep it busy
        if answer.get("status_code") != 0:
            raise RuntimeError(f"publish answered {answer}")
        offsets.append(answer["data"]["offset"])
    transport.send_close()
    transport.disconnect()
    return offsets


async def storm_round(
    args: argparse.Namespace, url: str, tokens: dict[str, str], at_drop: Callable[[], None]
) -> Storm:
    """`at_drop` is called once the crowd is connected, just before the drop: the window
    the server's CPU is measured over starts there."""
    users = [tokens[name] for name in tokens if name != "operator"]
    peers = await crowd(url, users, args.sockets)
    print(f"{len(peers)} sockets subscribed to {TOPIC}", flush=True)
    at_drop()
    storm = Storm(expected=len(peers))
    storm.dropped_at = time.monotonic()
    for peer in peers:
        peer.drop()
    storm.missed = await publish(url, tokens["operator"], args.missed)
    rng = random.Random(1)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def resume(index: int, offset: str | None) -> None:
        made: list[Resumer] = []
        try:
            await connect(url, users[index % len(users)], storm, offset, made)
        except Exception as error:  # refused, reset, handshake answered 4xx/5xx
            if not made or not made[0].finished:  # not counted by the socket itself
                if made:
                    made[0].finished = True
                storm.finish(None, f"{type(error).__name__}: {str(error)[:80]}")

    def reconnect(index: int, offset: str | None) -> None:
        task = loop.create_task(resume(index, offset))
        pending.add(task)
        task.add_done_callback(pending.discard)

    for index, peer in enumerate(peers):
        loop.call_later(rng.uniform(0, args.jitter), reconnect, index, peer.offset)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(storm.done.wait(), args.timeout)
    left = storm.expected - len(storm.resumed) - sum(storm.failures.values())
    if left:
        storm.failures[f"not resumed within {args.timeout:g} s"] += left
    for task in pending:
        task.cancel()
    return storm


def control(url: str, token: str, queue: Any, stop: Any) -> None:
    """The client that stays connected (own process): (monotonic time, echo ms) pairs."""
    pin_self(1)

    async def run() -> list[tuple[float, float]]:
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        class Echo(WSListener):  # type: ignore[misc]
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type is WSMsgType.TEXT:
                    answers.put_nowait(frame.get_payload_as_bytes())

        headers = {"Authorization": f"Bearer {token}"}
        transport, _ = await ws_connect(Echo, url, extra_headers=headers)
        samples, n = [], 0
        queue.put("ready")
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            transport.send(WSMsgType.TEXT, b'{"pkg_id":40,"req_id":"%d","data":{}}' % n)
            await answers.get()
            samples.append((started, (time.monotonic() - started) * 1000))
            await asyncio.sleep(0.01)
        transport.disconnect()
        return samples

    queue.put(asyncio.run(run()))


@contextlib.contextmanager
def control_process(url: str, token: str) -> Iterator[Any]:
    """Yields a function giving the control's samples (it stops the process)."""
    context = multiprocessing.get_context("spawn")
    queue, stop = context.Queue(), context.Event()
    child = context.Process(target=control, args=(url, token, queue, stop), daemon=True)
    child.start()
    if queue.get(timeout=30) != "ready":
        raise RuntimeError("the control client did not start")

    def samples() -> list[tuple[float, float]]:
        stop.set()
        result: list[tuple[float, float]] = queue.get(timeout=30)
        return result

    try:
        yield samples
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()


def pin_all_threads(pid: int, cpu: int) -> None:
    """Every thread of the server (the database's and the resolver's too) on `cpu`."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), {cpu})


def report(storm: Storm, control_ms: list[float], cpu: float, rss: tuple[float, float]) -> None:
    resumed = sorted(storm.resumed)
    total = storm.expected

    def at(share: float) -> str:
        needed = int(total * share + 0.999999)
        return f"{resumed[needed - 1]:.2f} s" if len(resumed) >= needed and needed else "never"

    print(f"resumed {len(resumed)} of {total}: 50% {at(0.5)}, 99% {at(0.99)}, all {at(1.0)}")
    print(f"failed: {dict(storm.failures) or 'none'}")
    print(
        f"missed messages per socket {len(storm.missed)}: lost {storm.lost}, duplicated "
        f"{storm.duplicated}; subscribe answered recovered=false {storm.not_recovered} times"
    )
    window = resumed[-1] if resumed else 0.0
    print(
        f"server CPU from the drop to the last resume {cpu:.2f} s ({cpu / window:.0%} of a core)"
        if window
        else f"server CPU {cpu:.2f} s"
    )
    print(f"server RSS with the crowd connected / after the storm: {rss[0]:.1f} / {rss[1]:.1f} MiB")
    if control_ms:
        ordered = sorted(control_ms)
        print(
            f"control echo during the storm: {len(ordered)} calls, p50 "
            f"{percentile(ordered, 50):.2f} ms, p99 {percentile(ordered, 99):.2f} ms, max "
            f"{ordered[-1]:.2f} ms"
        )
    else:
        print("control echo during the storm: no call completed")


def bench(args: argparse.Namespace, folder: Path) -> None:
    key = str(folder / "dev-key.json")
    names = {f"user{i}": ["user"] for i in range(args.users)}
    tokens = dev_tokens(key, {**names, "operator": ["user", "operator"]}, tenant="acme")
    env = {"REALTIME_RATE_LIMIT": "1000000", "REALTIME_RATE_BURST": "1000000"}
    if args.bus == "redis":
        import redis

        url = f"redis://127.0.0.1:6379/{args.redis_db}"
        redis.Redis.from_url(url).flushdb()
        env["REDIS_URL"] = url
    with node(folder, "storm", **env) as server:
        pid = server.process.pid
        pin_all_threads(pid, 0)
        pin_self(1)
        url = f"ws://{server.address}/ws"
        with control_process(url, tokens["user0"]) as samples, event_loop() as loop:
            started = time.monotonic()
            at_drop: dict[str, Any] = {}

            def dropping() -> None:
                pin_all_threads(pid, 0)  # the threads started while the crowd connected too
                at_drop.update(cpu=cpu_seconds(pid), threads=cpu_by_thread(pid))
                at_drop["rss"] = memory(pid)["rss_mib"]

            storm = loop.run(storm_round(args, url, tokens, dropping))
            cpu_used = cpu_seconds(pid) - at_drop["cpu"]
            threads = cpu_by_thread(pid)
            after = memory(pid)["rss_mib"]
            control_samples = samples()
        end = storm.dropped_at + (max(storm.resumed) if storm.resumed else args.timeout)
        during = [ms for at, ms in control_samples if storm.dropped_at <= at <= end]
        print(f"(the crowd connected in {storm.dropped_at - started:.1f} s, not measured)")
        report(storm, during, cpu_used, (at_drop["rss"], after))
        spent = {name: used - at_drop["threads"].get(name, 0.0) for name, used in threads.items()}
        print(
            "server CPU by thread (s): "
            + ", ".join(
                f"{name} {used:.2f}"
                for name, used in sorted(spent.items(), key=lambda i: -i[1])
                if used >= 0.01
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.storm", description=__doc__)
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--users", type=int, default=100, help="users the sockets belong to")
    parser.add_argument("--jitter", type=float, default=0.5, help="reconnect delays in [0, s]")
    parser.add_argument("--missed", type=int, default=5, help="messages published while away")
    parser.add_argument("--bus", choices=["redis", "memory"], default="redis")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up")
    args = parser.parse_args()
    print(machine.describe(machine.probe(), ("uvicorn", "uvloop", "picows")), flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    with tempfile.TemporaryDirectory(prefix="realtime-storm-") as folder:
        bench(args, Path(folder))


if __name__ == "__main__":
    main()

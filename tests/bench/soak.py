"""Soak: a hostile crowd at once against one `realtime serve`, and what it leaves behind.

    python -m tests.bench.soak [--storm 20] [--idle 2000] [--non-readers 200]

While a control client sends an echo every 10 ms and records its latency, the crowd is:
`--idle` authenticated idle sockets; `--non-readers` sockets subscribed to `broadcast`
that never read while a publisher floods it (30 KB messages: they are closed 1013 and
must be released); a slowloris crowd (`--slowloris` half-open request heads, reopened as
the server closes them); garbage storms (`--garbage` sockets sending invalid frames,
closed 1008, reconnecting). Printed: the server's RSS, descriptors and the kernel's TCP
memory at the start (by default once broadcast's retained history is full: `--prefill`),
at the peak, and after the crowd has left (and the close timeout
and the refusals' linger have passed), with the ratio after/start (target: within 5%),
and the control's p50/p99 during the storm (target: p99 under 50 ms). Nothing here
asserts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import machine
from tests.bench.common.figures import median, percentile, safe_ratio
from tests.bench.common.probes import memory
from tests.helpers import ws_connect, ws_connect_slow
from tests.nodes import mint, node


def probe(pid: int) -> dict[str, float]:
    """The server's RSS (MiB) and descriptors, and the kernel's TCP memory (MiB)."""
    return {k: v for k, v in memory(pid).items() if k != "hwm_mib"}


class Control:
    """An echo every 10 ms; latencies in ms."""

    def __init__(self) -> None:
        self.latencies: list[float] = []

    async def run(self, address: str, token: str, stop: asyncio.Event) -> None:
        ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
        n = 0
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            await ws.send(json.dumps({"pkg_id": 40, "req_id": str(n), "data": {"n": n}}))
            await ws.recv()
            self.latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        await ws.close()


async def idle_crowd(address: str, token: str, count: int) -> list[Any]:
    headers = {"Authorization": f"Bearer {token}"}
    crowd = []
    for start in range(0, count, 100):
        batch = [
            ws_connect(address, additional_headers=headers) for _ in range(min(100, count - start))
        ]
        crowd += await asyncio.gather(*batch)
    return crowd


async def non_readers(address: str, token: str, count: int) -> list[Any]:
    headers = {"Authorization": f"Bearer {token}"}
    sockets = [await ws_connect_slow(address, additional_headers=headers) for _ in range(count)]
    for n, ws in enumerate(sockets):
        await ws.send(json.dumps({"pkg_id": 30, "req_id": f"s{n}", "data": {"topic": "broadcast"}}))
    return sockets


async def flood(address: str, token: str, stop: asyncio.Event) -> None:
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    pad = "x" * 30_000
    n = 0
    while not stop.is_set():
        n += 1
        frame = {"topic": "broadcast", "data": {"n": n, "pad": pad}}
        await ws.send(json.dumps({"pkg_id": 32, "req_id": str(n), "data": frame}))
        await ws.recv()
        await asyncio.sleep(0.005)
    await ws.close()


async def slowloris(address: str, count: int, stop: asyncio.Event) -> None:
    host, port = address.rsplit(":", 1)

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                await reader.read()  # until the server gives up on us
                writer.close()
            except OSError:
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(count)))


async def garbage(address: str, token: str, count: int, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    async def one() -> None:
        while not stop.is_set():
            try:
                ws = await ws_connect(address, additional_headers=headers)
                try:
                    while not stop.is_set():
                        await ws.send("{not json")
                        await ws.recv()
                finally:
                    await ws.close()  # else it stays open and counts in "after"
            except Exception:  # closed 1008 (or refused over the limit): come back
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(count)))


async def prefill(address: str, token: str, count: int) -> None:
    """Fill `broadcast`'s retained history (REALTIME_STREAM_RETENTION events, 30 KB each,
    ~30 MiB kept by design) before the start is measured: the storm fills it anyway, and
    "after" must compare what the crowd left behind, not the history it published."""
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    pad = "x" * 30_000
    for n in range(count):
        frame = {"topic": "broadcast", "data": {"n": -n, "pad": pad}}
        await ws.send(json.dumps({"pkg_id": 32, "req_id": f"p{n}", "data": frame}))
        await ws.recv()
    await ws.close()


async def soak(args: argparse.Namespace, address: str, pid: int, tmp: Path) -> None:
    user, operator = mint(tmp, "alice"), mint(tmp, "root", "user,admin,operator")
    await asyncio.sleep(1)
    cold = probe(pid)
    if args.prefill:
        await prefill(address, operator, args.prefill)
        await asyncio.sleep(1)
    start = probe(pid)
    print(
        f"RSS before anything {cold['rss_mib']:.1f} MiB; start (after a prefill of "
        f"{args.prefill} publications of 30 KB on broadcast) {start['rss_mib']:.1f} MiB"
    )
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}:")
        await storm_round(args, address, pid, start, user, operator)


async def storm_round(
    args: argparse.Namespace,
    address: str,
    pid: int,
    start: dict[str, float],
    user: str,
    operator: str,
) -> None:
    """One crowd and storm, measured against the start of the whole run: a figure that
    grows from round to round is a leak; one that stays is a high-water mark."""
    stop = asyncio.Event()
    control = Control()
    control_task = asyncio.create_task(control.run(address, user, stop))
    crowd = await idle_crowd(address, user, args.idle)
    silent = await non_readers(address, user, args.non_readers)
    before_storm = len(control.latencies)
    storms = [
        asyncio.create_task(flood(address, operator, stop)),
        asyncio.create_task(slowloris(address, args.slowloris, stop)),
        asyncio.create_task(garbage(address, user, args.garbage, stop)),
    ]
    peak = start
    deadline = time.monotonic() + args.storm
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = probe(pid)
        peak = {key: max(peak[key], now[key]) for key in now}
    during = control.latencies[before_storm:]
    stop.set()
    await asyncio.gather(*storms, return_exceptions=True)
    await control_task
    for ws in crowd:
        await ws.close()
    for ws in silent:
        ws.transport.abort()
    await asyncio.sleep(args.settle)
    after = probe(pid)
    report(start, peak, after, during)


def report(
    start: dict[str, float], peak: dict[str, float], after: dict[str, float], during: list[float]
) -> None:
    print(f"{'':>14} {'start':>10} {'peak':>10} {'after':>10} {'after/start':>12}")
    for key in start:
        ratio = safe_ratio(after[key], start[key])
        print(
            f"{key:>14} {start[key]:>10.1f} {peak[key]:>10.1f} {after[key]:>10.1f} {ratio:>12.3f}"
        )
    if during:
        ordered = sorted(during)
        print(
            f"control echo during the storm: {len(during)} calls, "
            f"p50 {median(ordered):.2f} ms, p99 {percentile(ordered, 99):.2f} ms, "
            f"max {ordered[-1]:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__)
    parser.add_argument("--storm", type=float, default=20.0, help="seconds of storm")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--non-readers", type=int, default=200)
    parser.add_argument("--slowloris", type=int, default=300)
    parser.add_argument("--garbage", type=int, default=20)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after the crowd left")
    parser.add_argument("--rounds", type=int, default=1, help="crowds one after the other")
    parser.add_argument(
        "--prefill",
        type=int,
        default=1000,
        help="publications of 30 KB on broadcast before the start is measured (default 1000, "
        "REALTIME_STREAM_RETENTION: the retained history is full; 0: a cold start)",
    )
    parser.add_argument(
        "--pymalloc",
        action="store_true",
        help="run the server on Python's own allocator (PYTHONMALLOC=pymalloc) instead of "
        "the malloc `realtime serve` chooses, to compare",
    )
    args = parser.parse_args()
    print(machine.describe(machine.probe(), ("uvicorn", "uvloop", "websockets")), flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    env = {
        "REALTIME_RATE_LIMIT": "1000000",
        "REALTIME_RATE_BURST": "1000000",
        "REALTIME_HEADER_TIMEOUT": "5",
        "REALTIME_SEND_TIMEOUT": "2",
        "REALTIME_CLOSE_TIMEOUT": "5",
        **({"PYTHONMALLOC": "pymalloc"} if args.pymalloc else {}),
    }
    with tempfile.TemporaryDirectory() as folder, node(Path(folder), "soak", **env) as server:
        asyncio.run(soak(args, server.address, server.process.pid, Path(folder)))


if __name__ == "__main__":
    main()

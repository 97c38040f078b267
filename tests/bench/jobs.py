"""Jobs benchmark: progress latency from the worker's publish to the socket, and jobs
started (and finished) per second over the socket with N workers.

    python -m tests.bench.jobs [--workers 4] [--jobs 100] [--steps 20] [--duration 10]

Runs a real `realtime serve` node and N `realtime worker` processes on this machine's
Redis and PostgreSQL (a database created for the run, dropped after). Latency is the
client's receive time minus the `payload.at` the worker stamped right before publishing
(same machine, same clock). The floor printed next to it is a bare Redis stream hop
(XADD on one connection, XREAD BLOCK on another), measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from realtime.migrate import upgrade
from tests.bench.common import machine
from tests.bench.common.figures import median, percentile, safe_ratio
from tests.conftest import make_settings
from tests.helpers import ws_connect
from tests.nodes import mint, node, worker

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/12"
START, WATCH = 20, 23


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p50, p99 = (percentile(ordered, q) * 1000 for q in (50, 99))
    return (
        f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  max {max(values) * 1000:6.2f} ms  (n={len(values)})"
    )


async def admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{PG}/test")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def database(tmp: Path) -> Iterator[str]:
    name = f"realtime_bench_jobs_{secrets.token_hex(3)}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = f"{PG}/{name}"
    try:
        upgrade(make_settings(tmp, database_url=url))
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def redis_floor(samples: int = 2000) -> list[float]:
    """One bare stream hop: XADD, seen by a reader blocked in XREAD."""
    writer, reader = aioredis.from_url(REDIS), aioredis.from_url(REDIS)
    key = f"bench:floor:{secrets.token_hex(3)}"
    latencies: list[float] = []
    try:
        last = "0-0"
        for _ in range(samples):
            read = asyncio.create_task(reader.xread({key: last}, block=1000, count=1))
            await asyncio.sleep(0)  # let the read be sent first
            sent = time.time()
            await writer.xadd(key, {"t": sent})
            entries = await read
            latencies.append(time.time() - sent)
            last = entries[0][1][0][0]
    finally:
        await writer.delete(key)
        await writer.aclose()
        await reader.aclose()
    return latencies


async def watched_jobs(address: str, token: str, jobs: int, steps: int, seconds: float) -> Any:
    """Start `jobs` jobs at once on one socket, watch them all; latency of each progress."""
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    latencies: list[float] = []
    started = time.perf_counter()
    try:
        params = {"total_steps": steps, "step_seconds": seconds}
        for i in range(jobs):
            await ws.send(json.dumps({"pkg_id": START, "req_id": f"s{i}", "data": params}))
        done = 0
        live_from: dict[str, int] = {}  # job topic -> seq of the watch answer's offset
        while done < jobs:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            now = time.time()
            if frame.get("req_id", "").startswith("s"):
                job_id = frame["data"]["job_id"]
                request = {"pkg_id": WATCH, "req_id": "w", "data": {"job_id": job_id}}
                await ws.send(json.dumps(request))
            elif frame.get("req_id") == "w":
                topic = f"job:{frame['data']['job_id']}"
                live_from[topic] = int(frame["data"]["offset"].rpartition(":")[2])
            elif frame.get("event") == "job.progress":
                # only live events: the replayed history was published before the watch
                if int(frame["offset"].rpartition(":")[2]) > live_from[frame["topic"]]:
                    latencies.append(now - frame["data"]["payload"]["at"])
            elif frame.get("event") == "job.done":
                done += 1
    finally:
        await ws.close()
    return latencies, time.perf_counter() - started


async def start_rate(address: str, token: str, sockets: int, window: int, duration: float) -> Any:
    """Sockets keep `window` jobs.start requests in flight each for `duration` seconds."""
    params = {"total_steps": 1, "step_seconds": 0}
    answered = 0
    errors = 0

    async def one(ws: Any) -> None:
        nonlocal answered, errors
        deadline = time.perf_counter() + duration
        inflight = 0
        while True:
            while inflight < window and time.perf_counter() < deadline:
                await ws.send(json.dumps({"pkg_id": START, "req_id": "s", "data": params}))
                inflight += 1
            if inflight == 0:
                return
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            inflight -= 1
            if frame.get("status_code") == 0:
                answered += 1
            else:
                errors += 1

    headers = {"Authorization": f"Bearer {token}"}
    clients = [await ws_connect(address, additional_headers=headers) for _ in range(sockets)]
    began = time.perf_counter()
    await asyncio.gather(*(one(ws) for ws in clients))
    elapsed = time.perf_counter() - began
    for ws in clients:
        await ws.close()
    return answered, errors, elapsed, began


async def finished_rate(db_url: str, since: float, total: int) -> tuple[int, float]:
    """Wait until the `total` jobs created after `since` (Unix time) are final; returns
    (finished, seconds from `since` to the last one's end)."""
    connection = await asyncpg.connect(db_url)
    query = (
        "SELECT count(*), max(extract(epoch FROM updated_at)) FROM jobs "
        "WHERE extract(epoch FROM created_at) >= $1 AND state IN ('SUCCESS', 'FAILURE')"
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            done, last = await connection.fetchrow(query, since)
            if done >= total or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    return int(done), float(last or since) - since


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.jobs", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--loads", default="1,10,50", help="concurrent watched jobs, one run per number"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--sockets", type=int, default=8, help="for the start rate")
    parser.add_argument("--window", type=int, default=16, help="requests in flight each")
    parser.add_argument("--duration", type=float, default=10)
    args = parser.parse_args()
    print(machine.describe(machine.probe(), ("uvloop", "redis", "asyncpg", "taskiq")), flush=True)
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        with database(tmp) as db_url:
            run(tmp, db_url, args)


def run(tmp: Path, db_url: str, args: argparse.Namespace) -> None:
    env = {
        "REDIS_URL": REDIS,
        "DATABASE_URL": db_url,
        "REALTIME_RATE_LIMIT": "1000000",
        "REALTIME_RATE_BURST": "1000000",
        "REALTIME_MAX_INFLIGHT": "4096",
        "REALTIME_SEND_QUEUE": "65536",
        "REALTIME_DB_POOL_SIZE": "10",
    }
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(node(tmp, "node", **env))
        for i in range(args.workers):
            stack.enter_context(worker(tmp, f"worker-{i}", **env))
        token = mint(tmp, "bench")
        floor = asyncio.run(redis_floor())
        print(f"Redis stream hop (floor)            {ms(floor)}")
        runs = {}
        for jobs in (int(n) for n in args.loads.split(",")):
            latencies, took = asyncio.run(
                watched_jobs(server.address, token, jobs, args.steps, args.step_seconds)
            )
            runs[jobs] = latencies
            offered = jobs / args.step_seconds
            print(
                f"progress latency, {jobs:>3} jobs at once {ms(latencies)}  "
                f"(offered {offered:,.0f} steps/s, delivered {len(latencies) / took:,.0f}/s)"
            )
        quiet = runs[min(runs)]
        since = time.time()
        answered, errors, elapsed, _ = asyncio.run(
            start_rate(server.address, token, args.sockets, args.window, args.duration)
        )
        print(
            f"jobs.start over the socket          {answered / elapsed:,.0f} jobs/s "
            f"({answered} in {elapsed:.1f} s, {errors} errors, {args.workers} workers)"
        )
        done, span = asyncio.run(finished_rate(db_url, since, answered))
        print(
            f"jobs finished by the workers        {done / span:,.0f} jobs/s "
            f"({done} of {answered} in {span:.1f} s)"
        )
        ratio = safe_ratio(median(quiet), median(floor))
        print(f"quiet progress latency / Redis hop  x{ratio:.1f} (medians)")


if __name__ == "__main__":
    main()

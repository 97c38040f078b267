"""The fan-out systems: how each server is named, started and spoken to.

A `System` is one server of tests/bench/fanout/apps.py (or a command of its own, such as
tests/bench/peers/picows_server.py) and the `Dialect` of tests/bench/fanout/clients.py
its clients speak; `server` starts it for one run (its own process, on tests/bench/
server.py's uvicorn command, pinned when asked); `flush_redis` empties the one Redis
database a realtime server on the Redis bus was given. Used by `python -m
tests.bench.fanout` and `python -m tests.bench.compare`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.fanout import diagnostics
from tests.bench.server import bench_server

APPS = "tests.bench.fanout.apps"


@dataclass(frozen=True)
class System:
    name: str
    factory: str
    dialect: str  # realtime, socketio, channels or bare (tests/bench/fanout/clients.py)
    redis: bool = False
    env: dict[str, str] = field(default_factory=dict)
    command: Callable[[int], list[str]] | None = None  # not uvicorn: command(port)


def systems(patch: str = "") -> dict[str, System]:
    """By name; `patch` (diagnostics) goes to the realtime servers and into their names."""
    env = {diagnostics.ENV: patch}
    suffix = "".join(f"+{name}" for name in diagnostics.parse(patch))
    factory = f"{APPS}:realtime_app"
    return {
        "realtime-memory": System(f"realtime-memory{suffix}", factory, "realtime", False, env),
        "realtime-redis": System(f"realtime-redis{suffix}", factory, "realtime", True, env),
        "socketio": System("socketio", f"{APPS}:socketio_app", "socketio"),
        "channels": System("channels", f"{APPS}:channels_app", "channels"),
        "bare": System("bare", f"{APPS}:bare_app", "bare"),
    }


def flush_redis(url: str) -> None:
    """FLUSHDB of the database `url` names (only that one)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def server(
    system: System, tmp: Path, key: str, redis_url: str, cpu: int | None, node: str = "a"
) -> Iterator[tuple[int, int]]:
    """`system`'s server for one run, files in `tmp`, the dev key `key`; (pid, port)."""
    workdir = tmp / f"{system.name}-{node}"
    workdir.mkdir(exist_ok=True)
    env = {"BENCH_FANOUT_DIR": str(workdir), "BENCH_FANOUT_KEY": key, **system.env}
    if system.redis:
        env["BENCH_FANOUT_REDIS_URL"] = redis_url
    with bench_server(env, cpu=cpu, factory=system.factory, command=system.command) as (
        pid,
        port,
    ):
        yield pid, port

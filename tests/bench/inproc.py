"""The socket path's server CPU per request, in this process, without a network:
`python tests/bench/inproc.py [N]`, run from the root of the tree to measure.

N `echo` requests (16 per batch, embedded default, real services) go through a real
`Connection` whose ASGI receive/send are in memory; printed: CPU seconds per request
(`time.process_time`). Less noisy than the socket benchmark on a shared machine, and it
runs against older commits too (the imports fall back to the layout before issue 12), so
two trees can be compared back to back. A diagnostic: nothing asserts it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # the tree to measure, not the one this file is in

import orjson
import uvloop

from realtime.app import load_handlers
from realtime.auth.dev import DevIssuer
from realtime.builtin import BUILTIN_PACKAGES
from realtime.metrics import Metrics
from realtime.packages import Catalog
from realtime.permissions import Permissions
from realtime.ratelimit import MemoryRateLimiter
from realtime.settings import Settings
from realtime.topics import TopicPermissions

LAYOUT = "re-layout" if Path("realtime/lifespan.py").exists() else "before issue 12"
if Path("realtime/lifespan.py").exists():
    from realtime.dispatch import Dispatcher as Router
    from realtime.lifespan import build_services
    from realtime.socket.connection import ASGI_CHANNELS, Connection
    from realtime.socket.frames import package_frame
else:  # the layout before issue 12
    from realtime.connection import ASGI_CHANNELS, Connection, package_frame  # type: ignore
    from realtime.router import Router  # type: ignore
    from realtime.state import build_services  # type: ignore

BATCH = 16
ECHO = 40


class _WebSocket:
    """What Connection uses of Starlette's WebSocket before the frames flow."""

    def __init__(self, scope: dict[str, Any], token: str) -> None:
        self.scope = scope
        self.headers = {"authorization": f"Bearer {token}"}
        self.query_params: dict[str, str] = {}
        self.client = None  # the peer's address (the sessions registry lists it)
        self.url = types.SimpleNamespace(path="/ws")

    async def accept(self, subprotocol: str | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


def _settings(tmp: Path) -> Settings:
    return Settings.from_mapping({}).replace(
        dev_key_file=str(tmp / "key.json"),
        embedded_database=str(tmp / "embedded.db"),
        permissions_file="permissions.toml",
        dev_users_file="dev-users.toml",
        migrations_dir="migrations",
        rate_limit=float(os.environ.get("REALTIME_BENCH_RATE", 1e9)),
        rate_burst=int(float(os.environ.get("REALTIME_BENCH_RATE", 1e9))),
        # REALTIME_BENCH_REDIS=redis://...: the rate limits shared through Redis
        redis_url=os.environ.get("REALTIME_BENCH_REDIS") or None,
    )


async def measure(n: int) -> float:
    settings = _settings(Path(tempfile.mkdtemp()))
    catalog = Catalog([*BUILTIN_PACKAGES, *load_handlers(("handlers",))[0]])
    permissions = Permissions.load(settings.permissions_file)
    limiter = MemoryRateLimiter(settings.rate_limit, settings.rate_burst)
    if settings.redis_url:
        from realtime.ratelimit import SharedRateLimiter

        limiter = SharedRateLimiter(settings.rate_limit, settings.rate_burst)  # type: ignore[assignment]
    router = Router(catalog, permissions, limiter, Metrics(), settings.handler_timeout)
    topics = TopicPermissions(permissions.topics)
    async with build_services(settings, router, topics, []) as services:
        issuer = DevIssuer.load_or_create(
            settings.dev_key_file,
            audience=settings.keycloak_audience,
            client_id=settings.keycloak_client_id,
        )
        token = issuer.mint("alice", ["user"], tenant="acme")
        return await _run(services, token, n)


async def _run(services: Any, token: str, n: int) -> float:
    frames = [
        orjson.dumps({"pkg_id": ECHO, "req_id": str(i), "data": {"x": "y" * 40}}).decode()
        for i in range(BATCH)
    ]
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent, done = [0], asyncio.Event()

    async def send(message: Any) -> None:
        sent[0] += 1
        if sent[0] >= n:
            done.set()

    scope = {"type": "websocket", "subprotocols": [], ASGI_CHANNELS: (incoming.get, send)}
    connection = Connection(_WebSocket(scope, token), services, package_frame)  # type: ignore[arg-type]
    runner = asyncio.create_task(connection.run())
    await asyncio.sleep(0.2)  # authenticated, writer running
    gc.collect()
    started = time.process_time()
    for _ in range(0, n, BATCH):
        for frame in frames:
            incoming.put_nowait({"type": "websocket.receive", "text": frame})
        while incoming.qsize():
            await asyncio.sleep(0)
    await done.wait()
    cpu = time.process_time() - started
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    return cpu / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    per_request = uvloop.run(measure(n))
    print(f"{LAYOUT}: {per_request * 1e6:.2f} us server CPU per echo request ({n} requests)")


if __name__ == "__main__":
    main()

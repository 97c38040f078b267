"""End to end on a real uvicorn: slow consumers, cancellation on disconnect, 1011, 1012."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from realtime.rest import services_of
from realtime.socket.connection import Connection
from tests.conftest import build_app, make_settings
from tests.helpers import (
    auth_header,
    close_of,
    ws_call,
    ws_closed,
    ws_connect,
    ws_connect_slow,
)
from tests.nodes import mint, node

pytestmark = pytest.mark.anyio
ECHO, SLEEP = 40, 900


async def test_disconnect_cancels_in_flight_handlers(server: str, token: str) -> None:
    ws = await ws_connect(server, additional_headers={"Authorization": f"Bearer {token}"})
    for i in range(5):
        await ws.send(json.dumps({"pkg_id": SLEEP, "req_id": str(i), "data": {"seconds": 30}}))
    await asyncio.sleep(0.3)
    await ws.close()
    metrics = ""
    async with httpx.AsyncClient(base_url=f"http://{server}") as http:
        for _ in range(50):
            metrics = (await http.get("/metrics")).text
            if 'package="test.sleep",status="CANCELLED",transport="ws"} 5.0' in metrics:
                break
            await asyncio.sleep(0.1)
    assert 'package="test.sleep",status="CANCELLED",transport="ws"} 5.0' in metrics
    assert "realtime_connections 0.0" in metrics


def test_internal_failure_closes_1011_and_the_server_keeps_serving(
    tmp_path: Path, issuer_token: str
) -> None:
    def broken(connection: Connection, text: str) -> None:
        raise RuntimeError("a bug in a frame handler")

    async def endpoint(websocket: WebSocket) -> None:
        await Connection(websocket, services_of(websocket), broken).run()

    app = build_app(make_settings(tmp_path))
    app.router.routes.append(WebSocketRoute("/broken", endpoint))
    with TestClient(app) as client:
        with client.websocket_connect("/broken", headers=auth_header(issuer_token)) as ws:
            ws.send_text("anything")
            assert close_of(ws) == (1011, "internal error")
        with client.websocket_connect("/ws", headers=auth_header(issuer_token)) as ws:
            ws.send_text(json.dumps({"pkg_id": ECHO, "req_id": "a"}))
            assert ws.receive_json()["status_code"] == 0


@pytest.fixture
def served_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`realtime serve` as a user runs it, its output captured to a file."""
    with node(tmp_path, "served", REALTIME_LOG_LEVEL="debug") as served:
        yield served.process, served.address, served.log


def _mint(tmp_path: Path) -> str:
    return mint(tmp_path, "alice")


async def test_tokens_never_appear_in_the_server_output(
    tmp_path: Path, served_process: tuple[subprocess.Popen[str], str, Path]
) -> None:
    process, address, log = served_process
    token = _mint(tmp_path)
    bad = token[:-6] + "AAAAAA"
    for ws in [
        await ws_connect(address, f"/ws?token={token}"),
        await ws_connect(address, f"/ws?access_token=x&token={token}"),
        await ws_connect(address, subprotocols=["realtime.v1", f"bearer.{token}"]),
        await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"}),
    ]:
        assert (await ws_call(ws, ECHO, {"token": token}))["status_code"] == 0
        await ws.close()
    rejected = await ws_connect(address, f"/ws?token={bad}")
    assert (await ws_closed(rejected))[0] == 4401
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        login = await http.post("/auth/login", json={"username": "alice", "password": "alice"})
        assert login.status_code == 200
        issued = login.json()["access_token"]
        assert (await http.get("/me", headers={"Authorization": f"Bearer {issued}"})).is_success
        assert (await http.get("/health", params={"token": token})).status_code == 200
        metrics = (await http.get("/metrics")).text
    process.send_signal(signal.SIGINT)
    process.wait(10)
    output = log.read_text()
    assert "[redacted]" in output  # the handshake lines were logged, without the token
    for secret in (token, bad, issued, token.split(".")[2], issued.split(".")[2]):
        assert secret not in output
        assert secret not in metrics


async def test_worker_processes_close_sockets_1012_at_shutdown(tmp_path: Path) -> None:
    """With --workers, uvicorn's supervisor runs the servers: a restart closes with 1012."""
    from tests.conftest import flush_redis, redis_url
    from tests.nodes import free_port, node_env

    flush_redis()
    port = free_port()
    log = tmp_path / "workers.log"
    env = node_env(tmp_path, REDIS_URL=redis_url())
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        for _ in range(300):
            if log.read_text().count("Application startup complete") >= 2:
                break
            await asyncio.sleep(0.1)
        ws = await ws_connect(f"127.0.0.1:{port}", f"/ws?token={_mint(tmp_path)}")
        assert (await ws_call(ws, ECHO))["status_code"] == 0
        process.send_signal(signal.SIGTERM)
        assert (await ws_closed(ws))[0] == 1012
    finally:
        process.terminate()
        process.wait(20)


async def test_slow_reader_is_closed_1013_while_others_keep_being_served(tmp_path: Path) -> None:
    """A subscriber that stops reading while 24 MB are fanned out: its queue overflows and
    it is closed with 1013; the fast subscriber gets everything and the publisher gets
    every answer meanwhile."""
    env = {
        "REALTIME_SEND_QUEUE": "512",
        "REALTIME_SEND_TIMEOUT": "15",
        "REALTIME_RATE_LIMIT": "1000000",
        "REALTIME_RATE_BURST": "1000000",
        "REALTIME_MAX_INFLIGHT": "2048",
    }
    with node(tmp_path, "fanout", **env) as server:
        user = {"Authorization": f"Bearer {mint(tmp_path, 'alice')}"}
        admin = {"Authorization": f"Bearer {mint(tmp_path, 'root', 'user,operator')}"}
        slow = await ws_connect_slow(server.address, additional_headers=user)
        fast = await ws_connect(server.address, additional_headers=user)
        publisher = await ws_connect(server.address, additional_headers=admin)
        for ws in (slow, fast):
            assert (await ws_call(ws, 30, {"topic": "broadcast"}))["status_code"] == 0

        received: dict[Any, list[Any]] = {fast: [], publisher: []}

        async def read_all(ws: Any) -> list[Any]:
            frames = received[ws]
            async with asyncio.timeout(60):
                while len(frames) < 800:
                    frames.append(json.loads(await ws.recv()))
            return frames

        readers = [asyncio.create_task(read_all(ws)) for ws in (fast, publisher)]
        for n in range(800):  # ~24 MB that the slow one never reads
            # The fast ones are kept within 128 frames of the publisher (a quarter of their
            # queue): "fast" must not depend on how busy this test process is.
            while n - min(len(frames) for frames in received.values()) > 128:
                await asyncio.sleep(0.002)
            await publisher.send(
                json.dumps(
                    {
                        "pkg_id": 32,
                        "req_id": str(n),
                        "data": {"topic": "broadcast", "data": {"n": n, "pad": "x" * 30_000}},
                    }
                )
            )
        delivered, answers = await asyncio.gather(*readers)
        assert {a["status_code"] for a in answers} == {0}
        assert sorted(m["data"]["n"] for m in delivered) == list(range(800))
        assert await ws_closed(slow, timeout=30) == (1013, "slow consumer")
        for ws in (fast, publisher):
            await ws.close()


async def test_drain_pushes_server_draining_then_closes_1001(tmp_path: Path) -> None:
    with node(tmp_path, "draining", REALTIME_DRAIN_SECONDS="0.5") as server:
        ws = await ws_connect(server.address, f"/ws?token={_mint(tmp_path)}")
        assert (await ws_call(ws, ECHO))["status_code"] == 0
        server.process.send_signal(signal.SIGTERM)
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event == {"event": "server.draining", "data": {}}
        assert await ws_closed(ws) == (1001, "server draining")
        assert server.process.wait(10) in (0, -signal.SIGTERM)


def test_startup_objects_are_kept_out_of_the_collector_while_serving(settings: Any) -> None:
    """A full garbage collection used to scan the ~150k objects of imports and start-up
    (a 30-60 ms pause of every socket of the node); while the app serves they are frozen,
    and given back at shutdown (nothing frozen is left behind in a process that goes on)."""
    import gc

    frozen_before = gc.get_freeze_count()
    with TestClient(build_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() > frozen_before + 10_000
    assert gc.get_freeze_count() == 0

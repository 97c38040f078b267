"""End to end on a real uvicorn: slow consumers, cancellation on disconnect, 1011, 1012."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from realtime.connection import Connection
from realtime.rest import services_of
from tests.conftest import build_app, make_settings, serve
from tests.helpers import auth_header, close_of, ws_call, ws_closed, ws_connect
from tests.nodes import mint, node

pytestmark = pytest.mark.anyio
ECHO, SLEEP = 40, 900


async def test_slow_reader_is_closed_1013_while_others_keep_being_served(
    tmp_path: Path, issuer_token: str
) -> None:
    settings = make_settings(
        tmp_path,
        send_queue=32,
        send_timeout=1.0,
        rate_limit=1e6,
        rate_burst=10**6,
        max_inflight=1024,
    )
    headers = {"Authorization": f"Bearer {issuer_token}"}
    with serve(build_app(settings)) as address:
        # max_queue=1 and a small read limit: the client library stops reading from TCP
        slow = await ws_connect(address, additional_headers=headers, max_queue=1, max_size=2**20)
        normal = await ws_connect(address, additional_headers=headers)
        payload = {"pad": "x" * 30_000}
        for i in range(600):  # ~18 MB of answers that nobody reads
            await slow.send(json.dumps({"pkg_id": ECHO, "req_id": str(i), "data": payload}))
        for i in range(20):
            answer = await ws_call(normal, ECHO, {"i": i}, req_id=f"n{i}")
            assert answer["data"] == {"i": i}
        await asyncio.sleep(1.5)
        assert (await ws_call(normal, ECHO, {"still": True}))["status_code"] == 0
        # the slow client finally reads: what was buffered, then the 1013 close
        assert await ws_closed(slow, timeout=20) == (1013, "slow consumer")
        await normal.close()


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


async def test_server_shutdown_closes_sockets_1012(
    tmp_path: Path, served_process: tuple[subprocess.Popen[str], str, Path]
) -> None:
    process, address, _ = served_process
    ws = await ws_connect(address, f"/ws?token={_mint(tmp_path)}")
    assert (await ws_call(ws, ECHO))["status_code"] == 0
    process.send_signal(signal.SIGTERM)
    assert (await ws_closed(ws))[0] == 1012
    assert process.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught

"""Half-open requests (slowloris) against a real `realtime serve`: heads that never
complete are answered 408 and closed within REALTIME_HEADER_TIMEOUT; connections over
REALTIME_MAX_CONNECTIONS are answered 503 at once; both are counted and logged, and the
server serves again as soon as the crowd is gone."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ws_call, ws_connect
from tests.hostile.raw import connect
from tests.nodes import mint, node

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

LIMIT = 30


def half_open(address: str) -> socket.socket:
    """A request line and one header, never the blank line that ends the head."""
    sock = connect(address, timeout=10)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    return sock


def answer_of(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (b"" if it closed without a word)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def refused_count(metrics: str, reason: str) -> float:
    found = re.search(rf'realtime_http_refused_total{{reason="{reason}"}} ([0-9.]+)', metrics)
    assert found, metrics
    return float(found.group(1))


def test_half_open_requests_are_timed_out_and_connections_bounded(tmp_path: Path) -> None:
    env = {"REALTIME_HEADER_TIMEOUT": "1.5", "REALTIME_MAX_CONNECTIONS": str(LIMIT)}
    with node(tmp_path, "slowloris", **env) as server:
        address = server.address
        crowd = [half_open(address) for _ in range(LIMIT + 10)]
        started = time.monotonic()
        # over the limit: a 503 with the protocol's body, at once, then closed
        refused = [answer_of(sock) for sock in crowd[LIMIT:]]
        assert time.monotonic() - started < 1.0
        for answer in refused:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
            assert json.loads(body) == {
                "status_code": 9,
                "error": {"message": "too many connections", "details": {"retry_after": 1}},
            }
        # the held ones: 408 and closed once the head is late, not kept for ever
        held = [answer_of(sock) for sock in crowd[:LIMIT]]
        assert time.monotonic() - started < 1.5 + 3
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in held)
        for sock in crowd:
            sock.close()
        # served again once the refused connections' answers had their moment (1 s)
        deadline = time.monotonic() + 3
        while httpx.get(f"http://{address}/health").status_code != 200:
            assert time.monotonic() < deadline, "still refusing after the crowd left"
            time.sleep(0.1)
        assert httpx.get(f"http://{address}/health").json() == {"status": "ok"}
        metrics = httpx.get(f"http://{address}/metrics").text
        assert refused_count(metrics, "request head timed out") == LIMIT
        # the crowd's 10, and any /health probe above refused while they lingered
        assert refused_count(metrics, "over the connection limit") >= 10
        assert "refused connections since the last report" in server.output()


async def test_a_complete_request_is_not_cut_by_the_head_timeout(tmp_path: Path) -> None:
    """The deadline covers the head only: a kept-alive connection that is idle, then asks
    again, and a socket that stays open past the timeout, are served."""
    with node(tmp_path, "patient", REALTIME_HEADER_TIMEOUT="1") as server:
        token = mint(tmp_path, "alice")
        ws = await ws_connect(
            server.address, additional_headers={"Authorization": f"Bearer {token}"}
        )
        async with httpx.AsyncClient(base_url=f"http://{server.address}") as client:
            assert (await client.get("/health")).status_code == 200
            await asyncio.sleep(1.5)  # past the head timeout (within uvicorn's 5 s keep-alive)
            assert (await client.get("/health")).status_code == 200
        assert (await ws_call(ws, 40, {"still": "here"}))["data"] == {"still": "here"}
        await ws.close()

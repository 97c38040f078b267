"""`realtime serve --workers 2`: one scrape answers for both processes (prometheus-client's
multiprocess mode), whichever of them takes it."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx

from tests.conftest import redis_url
from tests.helpers import ws_call, ws_connect
from tests.nodes import free_port, mint, process

SOCKETS = 6


def _sample(text: str, pattern: str) -> float:
    found = re.findall(rf"^{pattern} (\S+)$", text, flags=re.M)
    return sum(float(value) for value in found)


async def _crowd(address: str, token: str) -> list[str]:
    """Six sockets, one echo each, then scrapes on fresh connections while they stay open."""
    header = {"Authorization": f"Bearer {token}"}
    sockets = [await ws_connect(address, additional_headers=header) for _ in range(SOCKETS)]
    for n, ws in enumerate(sockets):
        assert (await ws_call(ws, 40, {"n": n}, f"e{n}"))["data"] == {"n": n}
    scrapes = []
    deadline = time.monotonic() + 15
    while len(scrapes) < 8 and time.monotonic() < deadline:
        async with httpx.AsyncClient() as http:  # a new connection: any worker may take it
            text = (await http.get(f"http://{address}/metrics")).text
        echo = 'realtime_requests_total\\{package="echo",status="OK",transport="ws"\\}'
        if _sample(text, echo) == SOCKETS:  # folded (about once a second) by both
            scrapes.append(text)
        else:
            await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    return scrapes


def test_a_scrape_counts_the_sockets_of_every_worker(tmp_path: Path) -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--workers", "2"]
    with process(tmp_path, "node", args, "Application startup complete", REDIS_URL=redis_url()) as node:
        deadline = time.monotonic() + 30
        while node.output().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, node.output()
            time.sleep(0.1)
        scrapes = asyncio.run(_crowd(f"127.0.0.1:{port}", mint(tmp_path, "alice")))
    assert len(scrapes) == 8, "the two workers' echo counts never summed to 6"
    for text in scrapes:
        assert _sample(text, "realtime_connections") == SOCKETS
        assert _sample(text, "realtime_frames_received_total") == SOCKETS  # one echo each
        assert "realtime_request_seconds_bucket" in text

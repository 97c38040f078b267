"""A peer closed with 1013 that stays connected without reading: the server's end of the
connection (its descriptor, the kernel's buffers) is released within
REALTIME_CLOSE_TIMEOUT of the close decision, whatever the peer does, while the other
sockets keep being served."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime.auth.dev import DevIssuer
from tests.conftest import build_app, make_settings, serve
from tests.helpers import ws_call, ws_connect, ws_connect_slow

pytestmark = pytest.mark.anyio

CLOSE_TIMEOUT = 1.0


def server_side(port: int, peer_port: int) -> bool:
    """Whether the kernel still holds the server's end of the connection to `peer_port`
    (any state: ESTABLISHED, FIN_WAIT, CLOSE_WAIT... all hold buffers)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, remote = row.split()[1:3]
                if int(local.rsplit(":", 1)[1], 16) == port and (
                    int(remote.rsplit(":", 1)[1], 16) == peer_port
                ):
                    return True
    return False


async def publish_flood(publisher: Any, count: int) -> None:
    for n in range(count):
        data = {"topic": "broadcast", "data": {"n": n, "pad": "x" * 30_000}}
        await publisher.send(json.dumps({"pkg_id": 32, "req_id": str(n), "data": data}))
    async with asyncio.timeout(60):
        for _ in range(count):
            assert json.loads(await publisher.recv())["status_code"] == 0


async def test_a_non_reading_peer_closed_1013_is_released_within_the_close_timeout(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        send_queue=32,
        send_timeout=1.0,
        close_timeout=CLOSE_TIMEOUT,
        rate_limit=1e6,
        rate_burst=10**6,
        max_inflight=1024,
    )
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    )
    user = {"Authorization": f"Bearer {issuer.mint('alice', ['user'])}"}
    admin = {"Authorization": f"Bearer {issuer.mint('root', ['user', 'admin', 'operator'])}"}
    with serve(build_app(settings)) as address:
        port = int(address.rsplit(":", 1)[1])
        slow = await ws_connect_slow(address, additional_headers=user)
        peer_port = slow.transport.get_extra_info("sockname")[1]
        publisher = await ws_connect(address, additional_headers=admin)
        assert (await ws_call(slow, 30, {"topic": "broadcast"}))["status_code"] == 0
        assert server_side(port, peer_port)

        await publish_flood(publisher, 300)  # ~9 MB the slow peer never reads
        metrics = httpx.get(f"http://{address}/metrics").text
        assert 'realtime_socket_closes_total{code="1013"} 1.0' in metrics
        decided = time.monotonic()
        # the slow peer still holds its socket open and reads nothing
        while server_side(port, peer_port) and time.monotonic() - decided < 10:
            await asyncio.sleep(0.1)
        assert not server_side(port, peer_port), "the server still holds the non-reader"
        # within the close timeout of the decision (plus the send deadline before it)
        assert time.monotonic() - decided < CLOSE_TIMEOUT + 3
        # the others were served throughout and still are
        assert (await ws_call(publisher, 40, {"ping": 1}, "control"))["data"] == {"ping": 1}
        await publisher.close()
        slow.transport.abort()

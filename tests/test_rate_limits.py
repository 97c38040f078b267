"""Rate limits: one budget per caller for both doors, in process on the embedded default
and shared by every node through Redis (realtime.ratelimit.SharedRateLimiter); Redis
failing leaves each node its own limits, and every request answered."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.protocol import Status
from realtime.settings import Settings
from tests.conftest import build_app, flush_redis, make_settings, redis_url
from tests.helpers import auth_header, call, ws_call, ws_connect
from tests.nodes import mint, node
from tests.proxy import running_proxy

ECHO = 40
BURST = 5


def _token(settings: Settings) -> str:
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    )
    return issuer.mint(f"u-{secrets.token_hex(4)}", ["user"])  # a fresh bucket


@pytest.fixture(params=["memory", "redis"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A burst of 5, refilled at 0.2 per second: no token comes back during a test."""
    limits = {"rate_limit": 0.2, "rate_burst": BURST}
    if request.param == "memory":
        settings = make_settings(tmp_path, **limits)
    else:
        flush_redis()
        settings = make_settings(tmp_path, redis_url=redis_url(), **limits)
    with TestClient(build_app(settings)) as client:
        yield client, _token(settings)


def test_the_socket_and_rest_spend_one_budget(limited: tuple[TestClient, str]) -> None:
    client, token = limited
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answers = [call(ws, ECHO, {"n": n}, f"e{n}")["status_code"] for n in range(3)]
        assert answers == [Status.OK] * 3
        assert [client.get("/me", headers=auth_header(token)).status_code for _ in range(3)] == [
            200,
            200,
            429,
        ]
        refused = call(ws, ECHO, {"n": 9}, "late")
    assert refused["status_code"] == Status.RATE_LIMITED
    assert refused["error"]["details"]["retry_after"] >= 1


def _ok(answers: list[dict[str, Any]]) -> int:
    return sum(1 for answer in answers if answer["status_code"] == Status.OK)


async def _burst(address: str, token: str, n: int, tag: str) -> list[dict[str, Any]]:
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    try:
        return [await ws_call(ws, ECHO, {"n": i}, f"{tag}{i}") for i in range(n)]
    finally:
        await ws.close()


def test_two_nodes_share_one_budget(tmp_path: Path) -> None:
    flush_redis()
    env = {"REDIS_URL": redis_url(), "REALTIME_RATE_LIMIT": "0.2", "REALTIME_RATE_BURST": "5"}
    with node(tmp_path, "a", **env) as a, node(tmp_path, "b", **env) as b:
        token = mint(tmp_path, f"u-{secrets.token_hex(4)}")
        on_a = asyncio.run(_burst(a.address, token, 3, "a"))
        on_b = asyncio.run(_burst(b.address, token, 4, "b"))
        headers = {"Authorization": f"Bearer {token}"}
        over_rest = httpx.get(f"http://{a.address}/me", headers=headers).status_code
    assert _ok(on_a) == 3
    assert [x["status_code"] for x in on_b] == [Status.OK] * 2 + [Status.RATE_LIMITED] * 2
    assert over_rest == 429  # the same budget on the other door of the first node


async def _crowd(addresses: list[str], token: str, sockets: int, each: int) -> list[Any]:
    async def one(address: str, tag: str) -> list[dict[str, Any]]:
        ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
        try:
            frames = [f'{{"pkg_id": {ECHO}, "req_id": "{tag}{i}", "data": {{}}}}' for i in range(each)]
            for frame in frames:
                await ws.send(frame)
            import json

            return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in frames]
        finally:
            await ws.close()

    jobs = [one(addresses[n % len(addresses)], f"s{n}-") for n in range(sockets)]
    return [a for answers in await asyncio.gather(*jobs) for a in answers]


def test_concurrent_callers_on_two_nodes_never_get_more_than_the_limit(tmp_path: Path) -> None:
    """100 per second with a burst of 50, leased 10 at a time: 400 requests from 8
    sockets on two nodes at once. Granted at most the burst plus what refilled."""
    flush_redis()
    env = {"REDIS_URL": redis_url(), "REALTIME_RATE_LIMIT": "100", "REALTIME_RATE_BURST": "50"}
    with node(tmp_path, "a", **env) as a, node(tmp_path, "b", **env) as b:
        token = mint(tmp_path, f"u-{secrets.token_hex(4)}")
        started = time.monotonic()
        answers = asyncio.run(_crowd([a.address, b.address], token, sockets=8, each=50))
        elapsed = time.monotonic() - started
    granted = _ok(answers)
    assert len(answers) == 400
    assert {a["status_code"] for a in answers} <= {Status.OK, Status.RATE_LIMITED}
    assert 50 <= granted <= 50 + 100 * elapsed + 1, (granted, elapsed)


def test_redis_failing_leaves_the_nodes_limits_and_every_request_answered(
    tmp_path: Path,
) -> None:
    with running_proxy(redis_url()) as proxy:
        settings = make_settings(
            tmp_path, redis_url=proxy.url(redis_url()), rate_limit=0.2, rate_burst=BURST
        )
        with TestClient(build_app(settings)) as client:
            token = _token(settings)
            with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
                assert call(ws, ECHO, {}, "before")["status_code"] == Status.OK
                proxy.cut()
                answers = [call(ws, ECHO, {}, f"down{n}")["status_code"] for n in range(7)]
            metrics = client.get("/metrics").text
            proxy.restore()
    # the node's own bucket (burst 5, fresh) decides while Redis is down: answered, limited
    assert answers == [Status.OK] * BURST + [Status.RATE_LIMITED] * 2
    fallbacks = re.search(r"^realtime_rate_limit_fallbacks_total (\S+)$", metrics, re.M)
    assert fallbacks is not None and float(fallbacks.group(1)) >= 1

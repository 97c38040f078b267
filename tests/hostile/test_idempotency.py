"""Retries made safe: a create or a publish retried with the same idempotency key (after a
lost answer, a TIMEOUT with outcome unknown, a dropped socket) returns the first result
and writes nothing, on both doors, both engines and both buses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app, serve
from tests.helpers import auth_header, call, ws_call, ws_connect

pytestmark = pytest.mark.anyio
CREATE, LIST, SUBSCRIBE, PUBLISH = 10, 11, 30, 32


def mint_for(settings: Settings, sub: str, tenant: str, roles: tuple[str, ...] = ("user",)) -> str:
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    )
    return issuer.mint(sub, list(roles), tenant=tenant)


def test_a_retried_create_returns_the_first_project_on_both_doors(engine: Settings) -> None:
    alice = auth_header(mint_for(engine, "alice", "acme"))
    with (
        TestClient(build_app(engine)) as client,
        client.websocket_connect("/ws", headers=alice) as ws,
        client.websocket_connect("/ws", headers=alice) as watcher,
    ):
        assert call(watcher, SUBSCRIBE, {"topic": "projects.acme"})["status_code"] == 0
        data = {"name": "alpha", "idempotency_key": "create-7f3a"}
        first = call(ws, CREATE, data)
        again = call(ws, CREATE, data, "r2")
        over_rest = client.post("/projects", json=data, headers=alice)
        assert first["status_code"] == 0 and again["data"] == first["data"]
        assert over_rest.status_code == 201 and over_rest.json() == first["data"]
        # one row, and one announcement (the retries wrote and told nothing)
        listed = call(ws, LIST, {}, "r3")
        assert listed["meta"]["total"] == 1
        assert watcher.receive_json()["data"] == {"op": "created", "project": first["data"]}
        assert call(watcher, 40, {"after": "event"}, "e1")["data"] == {"after": "event"}
        # another key, or none, creates; the same key in another tenant is another key
        other = call(ws, CREATE, {"name": "beta", "idempotency_key": "create-other"}, "r4")
        plain = [call(ws, CREATE, {"name": "gamma"}, f"p{n}")["data"]["id"] for n in range(2)]
        globex = auth_header(mint_for(engine, "bob", "globex"))
        theirs = client.post("/projects", json=data, headers=globex).json()
        ids = {first["data"]["id"], other["data"]["id"], *plain, theirs["id"]}
        assert len(ids) == 5 and theirs["tenant_id"] == "globex"


def test_a_bad_idempotency_key_is_invalid_data(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for key in ("", "x" * 65, "no spaces"):
            answer = call(ws, CREATE, {"name": "n", "idempotency_key": key})
            assert answer["status_code"] == 2
            assert answer["error"]["details"][0]["path"] == "/idempotency_key"


async def test_concurrent_creates_with_one_key_make_one_project(engine: Settings) -> None:
    headers = auth_header(mint_for(engine, "alice", "acme"))
    with serve(build_app(engine)) as address:
        sockets = [await ws_connect(address, additional_headers=headers) for _ in range(4)]
        data = {"name": "raced", "idempotency_key": "race-1"}
        answers = await asyncio.gather(
            *(ws_call(ws, CREATE, data, f"c{n}") for n, ws in enumerate(sockets))
        )
        assert {a["status_code"] for a in answers} == {0}
        assert len({a["data"]["id"] for a in answers}) == 1
        listed = httpx.get(f"http://{address}/projects", headers=headers).json()
        assert listed["meta"]["total"] == 1
        for ws in sockets:
            await ws.close()


async def test_a_retried_publish_is_delivered_once(bus: Settings) -> None:
    admin = {"Authorization": f"Bearer {mint_for(bus, 'root', 'acme', ('user', 'admin'))}"}
    with serve(build_app(bus)) as address:
        publisher = await ws_connect(address, additional_headers=admin)
        subscriber = await ws_connect(address, additional_headers=admin)
        topic = "broadcast.acme"
        assert (await ws_call(subscriber, SUBSCRIBE, {"topic": topic}))["status_code"] == 0
        frame: dict[str, Any] = {"topic": topic, "data": {"n": 1}, "idempotency_key": "pub-1"}
        first = await ws_call(publisher, PUBLISH, frame, "p1")
        again = await ws_call(publisher, PUBLISH, frame, "p2")
        other = await ws_call(publisher, PUBLISH, {**frame, "idempotency_key": "pub-2"}, "p3")
        assert first["status_code"] == 0 and again["data"] == first["data"]
        assert other["data"]["offset"] != first["data"]["offset"]
        received = [json.loads(await asyncio.wait_for(subscriber.recv(), 5)) for _ in range(2)]
        assert [m["offset"] for m in received] == [first["data"]["offset"], other["data"]["offset"]]
        # nothing else arrives: the retry appended nothing
        control = await ws_call(subscriber, 40, {"last": True}, "control")
        assert control["data"] == {"last": True}
        for ws in (publisher, subscriber):
            await ws.close()


async def test_a_refused_publish_is_unavailable_a_dropped_one_unknown() -> None:
    """UNAVAILABLE means not done: a publish that could not connect was never sent; one
    whose connection failed after it was sent may have run (the answer is TIMEOUT,
    outcome unknown, and a retry with the key is safe)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from realtime.bus import BusOutcomeUnknown, BusUnavailable
    from realtime.bus.redis import RedisBackend
    from tests.nodes import free_port

    refused = RedisBackend(
        f"redis://127.0.0.1:{free_port()}/0", retention=10, ttl=60, presence_ttl=5, timeout=2
    )
    with pytest.raises(BusUnavailable) as error:
        await refused.publish("t", b"{}")
    assert type(error.value) is BusUnavailable
    await refused.close()

    async def dropped() -> None:  # what redis-py raises when the socket closes mid-reply
        raise RedisConnectionError("Connection closed by server.")

    with pytest.raises(BusOutcomeUnknown):
        await refused._call("publish", dropped(), write=True)
    with pytest.raises(BusUnavailable) as error:
        await refused._call("history", dropped())  # a read: nothing was changed
    assert type(error.value) is BusUnavailable
    # each failed call counted once, under its operation (realtime_bus_errors_total)
    failures = refused.failures()
    assert (failures["publish"], failures["history"], failures["read"]) == (2, 1, 0)

"""Per-user controls (issue 14): the cap on concurrent sockets per user, on both buses and
across two real nodes on Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app, flush_redis, make_settings, redis_url
from tests.helpers import (
    auth_header,
    call,
    close_of,
    dev_issuer,
    echo,
    ws_call,
    ws_closed,
    ws_connect,
)
from tests.nodes import Node, mint, node
from tests.proxy import running_proxy

ECHO, AUTH_REFRESH = 40, 42
TOO_MANY = (4409, "too many sockets for this user")


def metric(client: TestClient, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def capped(bus: Settings) -> Iterator[tuple[TestClient, DevIssuer]]:
    settings = bus.replace(max_sockets_per_user=2)
    with TestClient(build_app(settings)) as client:
        yield client, dev_issuer(settings)


def test_the_socket_over_the_cap_is_closed_and_the_others_stay(
    capped: tuple[TestClient, DevIssuer],
) -> None:
    client, issuer = capped
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    with (
        client.websocket_connect("/ws", headers=alice) as first,
        client.websocket_connect("/ws", headers=alice) as second,
    ):
        assert (echo(first, 1), echo(second, 2)) == (1, 2)
        with client.websocket_connect("/ws", headers=alice) as third:
            assert close_of(third) == TOO_MANY
        # the two admitted ones are untouched; another user, and alice of another
        # tenant (another user), are not counted with her
        assert (echo(first, 3), echo(second, 4)) == (3, 4)
        for sub, tenant in (("bob", "acme"), ("alice", "other")):
            other = auth_header(issuer.mint(sub, ["user"], tenant=tenant))
            with client.websocket_connect("/ws", headers=other) as ws:
                assert echo(ws, sub) == sub
    assert metric(client, "realtime_socket_cap_rejections_total") == 1
    assert metric(client, 'realtime_socket_closes_total{code="4409"}') == 1


def test_a_closed_socket_frees_its_slot(capped: tuple[TestClient, DevIssuer]) -> None:
    client, issuer = capped
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    with client.websocket_connect("/ws", headers=alice) as first:
        with client.websocket_connect("/ws", headers=alice) as second:
            echo(second, 1)
        # the server frees the slot once it has seen the close: a moment later
        deadline = time.monotonic() + 10
        while True:
            with client.websocket_connect("/ws", headers=alice) as again:
                again.send_json({"pkg_id": ECHO, "req_id": "again", "data": {"v": 2}})
                message = again.receive()
                if message["type"] == "websocket.send":
                    assert (
                        message["text"]
                        == '{"pkg_id":40,"req_id":"again","status_code":0,"data":{"v":2}}'
                    )
                    break
                assert (message["code"], message["reason"]) == TOO_MANY
            assert time.monotonic() < deadline, "the closed socket's slot was never freed"
        assert echo(first, 3) == 3


def test_first_frame_auth_over_the_cap_gets_no_answer_only_the_close(
    capped: tuple[TestClient, DevIssuer],
) -> None:
    client, issuer = capped
    token = issuer.mint("alice", ["user"], tenant="acme")
    with (
        client.websocket_connect("/ws", headers=auth_header(token)) as first,
        client.websocket_connect("/ws", headers=auth_header(token)) as second,
        client.websocket_connect("/ws") as third,
    ):
        assert (echo(first, 1), echo(second, 2)) == (1, 2)  # both admitted by now
        third.send_json({"pkg_id": AUTH_REFRESH, "req_id": "a", "data": {"token": token}})
        # nothing before the close: a client that counts its failed attempts by "not
        # authenticated" keeps backing off (realtime.js resets its backoff on an answer)
        assert third.receive() == {"type": "websocket.close", "code": 4409, "reason": TOO_MANY[1]}


def test_no_cap_by_default(bus_client: TestClient, bus: Settings) -> None:
    alice = auth_header(dev_issuer(bus).mint("alice", ["user"], tenant="acme"))
    sockets = [bus_client.websocket_connect("/ws", headers=alice) for _ in range(5)]
    opened = [ws.__enter__() for ws in sockets]
    try:
        assert [echo(ws, n) for n, ws in enumerate(opened)] == [0, 1, 2, 3, 4]
    finally:
        for ws in sockets:
            ws.__exit__(None, None, None)


@pytest.mark.parametrize("fault", ["cut", "hole"])
def test_redis_failing_falls_back_to_the_nodes_own_count(tmp_path: Path, fault: str) -> None:
    """Redis down (cut) or hung (hole): the node's own sockets of the user decide, so the
    cap still holds on this node and nothing else is refused."""
    flush_redis()
    with running_proxy(redis_url()) as proxy:
        settings = make_settings(
            tmp_path,
            redis_url=proxy.url(redis_url()),
            redis_timeout=0.5,
            max_sockets_per_user=2,
        )
        with TestClient(build_app(settings)) as client:
            alice = auth_header(dev_issuer(settings).mint("alice", ["user"], tenant="acme"))
            getattr(proxy, fault)()
            with (
                client.websocket_connect("/ws", headers=alice) as first,
                client.websocket_connect("/ws", headers=alice) as second,
            ):
                assert (echo(first, 1), echo(second, 2)) == (1, 2)
                with client.websocket_connect("/ws", headers=alice) as third:
                    assert close_of(third) == TOO_MANY
                # the two admitted on the node's own count are counted, and the refusal
                assert metric(client, "realtime_socket_cap_fallbacks_total") == 2
                assert metric(client, "realtime_socket_cap_rejections_total") == 1
                # what needs the fleet's registry is not done: UNAVAILABLE, or for a
                # disconnect sent and unanswered, TIMEOUT with its outcome unknown
                root = auth_header(dev_issuer(settings).mint("root", ["admin"], tenant="acme"))
                listing = client.get("/sessions", headers=root)
                assert (listing.status_code, listing.headers["retry-after"]) == (503, "2")
                kicked = client.post("/sessions/alice/disconnect", headers=root)
                me = client.get("/me", headers=alice)
                if fault == "cut":
                    assert (kicked.status_code, kicked.json()["error"]["message"]) == (
                        503,
                        "Redis is unavailable: no socket was closed",
                    )
                    assert me.status_code == 200  # nothing revoked either
                else:
                    assert kicked.status_code == 504
                    assert kicked.json()["error"]["details"] == {"outcome": "unknown"}
                    # the order may have gone out: this node refuses her tokens as others may
                    assert (me.status_code, me.json()["error"]["message"]) == (
                        401,
                        "token revoked",
                    )
                assert echo(first, 3) == 3
            proxy.restore()


# -- two real nodes on Redis ------------------------------------------------------------

CLUSTER_ENV = {"REALTIME_PRESENCE_TTL": "2", "REALTIME_MAX_SOCKETS_PER_USER": "2"}


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Node, Node]]:
    flush_redis()
    env = {"REDIS_URL": redis_url(), "DATABASE_URL": pg_url, **CLUSTER_ENV}
    with node(tmp_path, "a", **env) as a, node(tmp_path, "b", **env) as b:
        yield a, b


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def answers(ws: Any, value: int) -> bool:
    reply = await ws_call(ws, ECHO, {"v": value}, f"e{value}")
    return bool(reply.get("data") == {"v": value})


async def admitted(address: str, token: str, deadline: float) -> Any:
    """A socket of `token` on `address`, opened again until the cap lets it in."""
    from websockets.exceptions import ConnectionClosed

    while True:
        ws = await ws_connect(address, **bearer(token))
        try:
            if await answers(ws, 0):
                return ws
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4409, closed
        assert time.monotonic() < deadline, "never admitted"
        await asyncio.sleep(0.1)


@pytest.mark.anyio
async def test_the_cap_counts_the_users_sockets_on_every_node(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    alice = mint(tmp_path, "alice")
    first = await ws_connect(a.address, **bearer(alice))
    second = await ws_connect(b.address, **bearer(alice))
    assert await answers(first, 1) and await answers(second, 2)
    for address in (a.address, b.address):  # the third, on either node
        third = await ws_connect(address, **bearer(alice))
        assert await ws_closed(third) == TOO_MANY
    assert await answers(first, 3) and await answers(second, 4)
    bob = await ws_connect(a.address, **bearer(mint(tmp_path, "bob")))
    assert await answers(bob, 5)  # another user: not counted with alice

    await first.close()  # its slot is free once node a has seen the close
    fourth = await admitted(b.address, alice, time.monotonic() + 10)
    assert await answers(second, 6) and await answers(fourth, 7)
    for ws in (second, fourth, bob):
        await ws.close()
    await no_session_keys_left()


@pytest.mark.anyio
async def test_a_dead_nodes_sockets_stop_counting_once_their_entries_expire(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    alice = mint(tmp_path, "alice")
    on_a = [await ws_connect(a.address, **bearer(alice)) for _ in range(2)]
    assert all([await answers(ws, n) for n, ws in enumerate(on_a)])
    refused = await ws_connect(b.address, **bearer(alice))
    assert await ws_closed(refused) == TOO_MANY
    a.kill()  # its entries are not removed: they expire (REALTIME_PRESENCE_TTL, 2 s)
    deadline = time.monotonic() + 20
    sockets = [await admitted(b.address, alice, deadline) for _ in range(2)]
    third = await ws_connect(b.address, **bearer(alice))
    assert await ws_closed(third) == TOO_MANY  # the cap holds on what is alive
    for ws in sockets:
        await ws.close()


# -- sessions.list and sessions.disconnect ------------------------------------------------

SESSIONS_LIST, SESSIONS_DISCONNECT = 9010, 9011


@pytest.fixture
def tenancy(bus: Settings) -> Iterator[tuple[TestClient, DevIssuer]]:
    with TestClient(build_app(bus)) as client:
        yield client, dev_issuer(bus)


def listed(client: TestClient, token: str, expected: int, **query: Any) -> dict[str, Any]:
    """GET /sessions, again until it lists `expected` sockets (on Redis a socket's entry
    is written a moment after it opened, and removed a moment after it closed)."""
    deadline = time.monotonic() + 10
    while True:
        answer = client.get("/sessions", params=query, headers=auth_header(token))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["meta"]["total"] == expected:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_sessions_list_shows_the_tenants_sockets_only(
    tenancy: tuple[TestClient, DevIssuer],
) -> None:
    client, issuer = tenancy
    root = issuer.mint("root", ["user", "admin"], tenant="acme")
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    bob = auth_header(issuer.mint("bob", ["user"], tenant="acme"))
    carl = auth_header(issuer.mint("carl", ["user"], tenant="other"))
    with (
        client.websocket_connect("/ws", headers=alice),
        client.websocket_connect("/ws/echo", headers=alice),
        client.websocket_connect("/ws", headers=bob),
        client.websocket_connect("/ws", headers=carl),  # another tenant's: never listed
    ):
        body = listed(client, root, 3)
        assert [(s["sub"], s["path"]) for s in body["data"]] in (
            [("alice", "/ws"), ("alice", "/ws/echo"), ("bob", "/ws")],
            [("alice", "/ws/echo"), ("alice", "/ws"), ("bob", "/ws")],
        )
        first = body["data"][0]
        assert set(first) == {"id", "sub", "node", "connected_at", "remote", "path"}
        assert first["remote"] == "testclient" and re.fullmatch(r".+:\d+", first["node"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["connected_at"])
        assert body["meta"] == {"page": 1, "per_page": 20, "total": 3, "pages": 1}
        assert {s["sub"] for s in listed(client, root, 2, sub="alice")["data"]} == {"alice"}
        page = listed(client, root, 3, per_page=2, page=2)
        assert [s["sub"] for s in page["data"]] == ["bob"]
        # on the socket too; the admin's own socket is one of the tenant's now
        with client.websocket_connect("/ws", headers=auth_header(root)) as ws:
            deadline = time.monotonic() + 10
            while (answer := call(ws, SESSIONS_LIST, {"sub": "root"}))["meta"]["total"] != 1:
                assert time.monotonic() < deadline, answer
            assert answer["data"][0]["sub"] == "root" and "token" not in str(answer)
        other_admin = issuer.mint("root", ["user", "admin"], tenant="other")
        assert [s["sub"] for s in listed(client, other_admin, 1)["data"]] == ["carl"]


def test_sessions_disconnect_closes_that_user_only_and_is_audited(
    tenancy: tuple[TestClient, DevIssuer],
) -> None:
    client, issuer = tenancy
    root = auth_header(issuer.mint("root", ["user", "admin"], tenant="acme"))
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    bob = auth_header(issuer.mint("bob", ["user"], tenant="acme"))
    alice_elsewhere = auth_header(issuer.mint("alice", ["user"], tenant="other"))
    with (
        client.websocket_connect("/ws", headers=alice) as first,
        client.websocket_connect("/ws", headers=alice) as second,
        client.websocket_connect("/ws", headers=bob) as bobs,
        client.websocket_connect("/ws", headers=alice_elsewhere) as other,
    ):
        for n, ws in enumerate((first, second, bobs, other)):
            assert echo(ws, n) == n  # all admitted
        before = int(time.time())
        answer = client.post("/sessions/alice/disconnect", json={"reason": "policy"}, headers=root)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        revoked = {"revoked_at": body["revoked_at"], "revoked_until": body["revoked_at"] + 86400}
        assert body == {"sub": "alice", "closed": 2, "nodes": 1, "unanswered_nodes": 0, **revoked}
        assert before <= body["revoked_at"] <= time.time()  # now, in Unix seconds
        reason = "disconnected by an administrator: policy"
        assert close_of(first) == close_of(second) == (4410, reason)
        assert (echo(bobs, 5), echo(other, 6)) == (5, 6)  # bob, and alice of another tenant
    deadline = time.monotonic() + 10
    while True:  # the audit log is written in batches, off the request
        rows = client.get(
            "/audit-logs", params={"package": "sessions.disconnect"}, headers=root
        ).json()["data"]
        if rows:
            break
        assert time.monotonic() < deadline, "no audit row"
        time.sleep(0.05)
    assert [(r["sub"], r["target"], r["transport"], r["outcome"]) for r in rows] == [
        ("root", "alice", "rest", "OK")
    ]
    assert metric(client, 'realtime_socket_closes_total{code="4410"}') == 2


def test_sessions_need_an_admin_of_the_same_tenant(tenancy: tuple[TestClient, DevIssuer]) -> None:
    client, issuer = tenancy
    alice_token = issuer.mint("alice", ["user"], tenant="acme")
    alice = auth_header(alice_token)
    other_admin = auth_header(issuer.mint("root", ["user", "admin"], tenant="other"))
    with client.websocket_connect("/ws", headers=alice) as ws:
        for pkg_id, data in ((SESSIONS_LIST, {}), (SESSIONS_DISCONNECT, {"sub": "alice"})):
            assert call(ws, pkg_id, data)["status_code"] == 3  # PERMISSION_DENIED
        assert client.get("/sessions", headers=alice).status_code == 403
        assert client.post("/sessions/bob/disconnect", headers=alice).status_code == 403
        assert client.get("/sessions").status_code == 401
        assert client.post("/sessions/bob/disconnect").status_code == 401
        # another tenant's admin names alice: that is alice of their tenant, nobody here
        answer = client.post("/sessions/alice/disconnect", headers=other_admin)
        assert answer.status_code == 200
        assert answer.json()["closed"] == 0
        assert listed(client, issuer.mint("root", ["admin"], tenant="other"), 0)["data"] == []
        assert echo(ws, 1) == 1
        long = client.post(
            "/sessions/bob/disconnect", json={"reason": "x" * 81}, headers=other_admin
        )
        assert long.status_code == 422
        unknown = client.post("/sessions/bob/disconnect", json={"why": "x"}, headers=other_admin)
        assert unknown.status_code == 422


@pytest.mark.anyio
async def test_sessions_disconnect_closes_the_users_sockets_on_both_nodes_only(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    alice, bob = mint(tmp_path, "alice"), mint(tmp_path, "bob")
    admin = await ws_connect(a.address, **bearer(mint(tmp_path, "root", "user,admin")))
    alices = [await ws_connect(n.address, **bearer(alice)) for n in (a, b)]
    bobs = [await ws_connect(n.address, **bearer(bob)) for n in (a, b)]
    assert all([await answers(ws, n) for n, ws in enumerate(alices + bobs)])
    answer = await ws_call(admin, SESSIONS_DISCONNECT, {"sub": "alice"})
    counts = {k: answer["data"][k] for k in ("sub", "closed", "nodes", "unanswered_nodes")}
    assert counts == {"sub": "alice", "closed": 2, "nodes": 2, "unanswered_nodes": 0}
    for ws in alices:
        assert await ws_closed(ws) == (4410, "disconnected by an administrator")
    assert all([await answers(ws, 10 + n) for n, ws in enumerate(bobs)])
    assert await answers(admin, 20)
    deadline = time.monotonic() + 10
    while True:  # alice's entries go once each node has seen her sockets close
        page = await ws_call(admin, SESSIONS_LIST, {}, "list")
        subs = sorted(s["sub"] for s in page["data"])
        if subs == ["bob", "bob", "root"]:
            break
        assert time.monotonic() < deadline, subs
        await asyncio.sleep(0.1)
    assert {s["node"] for s in page["data"] if s["sub"] == "bob"} == {
        s["node"] for s in page["data"]
    } and len({s["node"] for s in page["data"]}) == 2
    for ws in (admin, *bobs):
        await ws.close()
    await no_session_keys_left()


async def no_session_keys_left() -> None:
    """Every socket closed: their entries are removed, no key of theirs is left behind."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url())
    try:
        deadline = time.monotonic() + 10
        while keys := await redis.keys("realtime:sessions:*"):
            assert time.monotonic() < deadline, keys
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


def test_a_stray_message_on_the_sessions_channel_does_not_deafen_the_node(
    tmp_path: Path,
) -> None:
    """Anything published on the channel that is not an order (a JSON array, a number,
    garbage) is logged and skipped: the node still hears the next disconnect."""
    import redis

    from realtime.sessions import KEY_PREFIX

    flush_redis()
    settings = make_settings(tmp_path, redis_url=redis_url())
    issuer = dev_issuer(settings)
    root = auth_header(issuer.mint("root", ["user", "admin"], tenant="acme"))
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    db = int(redis_url().rsplit("/", 1)[1])
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=alice) as ws,
    ):
        assert echo(ws, 1) == 1
        publisher = redis.Redis.from_url(redis_url())
        try:
            for stray in (b"[1]", b"7", b"not json", b'{"op": 3}'):
                publisher.publish(f"{KEY_PREFIX}{db}", stray)
        finally:
            publisher.close()
        time.sleep(0.3)  # let the listener take them before the order
        answer = client.post("/sessions/alice/disconnect", json={}, headers=root)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["closed"], answer.json()["nodes"]) == (1, 1)
        assert close_of(ws)[0] == 4410


@pytest.mark.anyio
async def test_a_stopping_node_removes_the_entries_of_its_last_closed_sockets() -> None:
    """Sockets released right before the node stops leave nothing in Redis: their
    entries would count against their user's cap until they expired."""
    from types import SimpleNamespace

    from redis.asyncio import Redis

    from realtime.auth.principal import Principal
    from realtime.auth.revoked import Revocations
    from realtime.metrics import Metrics
    from realtime.sessions import RedisSessions

    flush_redis()
    client = Redis.from_url(redis_url())
    sessions = RedisSessions(0, Metrics(), Revocations(60), client, ttl=3.0, timeout=1.0)
    await sessions.start()
    alice = Principal(
        "alice", None, None, None, frozenset(), {}, "acme", int(time.time()) + 600, {}
    )
    sockets = [
        SimpleNamespace(
            id=f"s{n}",
            websocket=SimpleNamespace(client=None, url=SimpleNamespace(path="/ws")),
            close=lambda error: None,
        )
        for n in range(3)
    ]
    try:
        for socket in sockets:
            await sessions.admit(socket, alice)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # written by the node's writer
        assert [k async for k in client.scan_iter("realtime:sessions:*:u:alice")]
        for socket in sockets:
            sessions.release(socket)  # type: ignore[arg-type]
        await sessions.stop(1.0)  # at once: the writer had no turn
        assert [k async for k in client.scan_iter("realtime:sessions:*:u:alice")] == []
    finally:
        await client.aclose()

"""Issue 14, "cut this user off now": after `sessions.disconnect` the user's tokens issued
until then are refused (4401 `token revoked`, REST 401) for REALTIME_REVOKE_SECONDS, on
every node; a token issued later, and every other user, are served."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from realtime.auth.dev import DEV_ALGORITHM, DEV_ISSUER, DevIssuer
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

ECHO, ME, AUTH_REFRESH, SESSIONS_DISCONNECT = 40, 41, 42, 9011
REVOKED = (4401, "token revoked")
PATHS = ["/ws", "/web", "/ws/echo", f"/ws/jobs/{uuid.uuid4()}"]


def refused(client: TestClient, token: str, path: str = "/ws") -> tuple[int, str]:
    """The close of a socket opened with `token` at the handshake."""
    with client.websocket_connect(path, headers=auth_header(token)) as ws:
        return close_of(ws)


def outcome(client: TestClient, token: str) -> str | tuple[int, str]:
    """`served` (a socket of `token` answers), or how it was closed."""
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ws.send_json({"pkg_id": ECHO, "req_id": "o", "data": {"v": 0}})
        message = ws.receive()
        if message["type"] == "websocket.send":
            assert json.loads(message["text"])["data"] == {"v": 0}
            return "served"
        return message["code"], message.get("reason", "")


def refused_first_frame(client: TestClient, token: str) -> tuple[int, str]:
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"pkg_id": AUTH_REFRESH, "req_id": "a", "data": {"token": token}})
        return close_of(ws)


def without_iat(settings: Settings, sub: str, tenant: str) -> str:
    key = RSAKey.import_key(json.loads(Path(settings.dev_key_file).read_text()))
    claims = {
        "iss": DEV_ISSUER,
        "aud": settings.keycloak_audience,
        "sub": sub,
        "typ": "Bearer",
        "exp": int(time.time()) + 600,
        "tenant_id": tenant,
        "realm_access": {"roles": ["user"]},
    }
    header = {"alg": DEV_ALGORITHM, "kid": dev_issuer(settings).kid}
    return jwt.encode(header, claims, key, algorithms=[DEV_ALGORITHM])


def disconnect(client: TestClient, admin: str, sub: str) -> dict[str, Any]:
    answer = client.post(f"/sessions/{sub}/disconnect", headers=auth_header(admin))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
def served(bus: Settings) -> Iterator[tuple[TestClient, DevIssuer, Settings]]:
    with TestClient(build_app(bus)) as client:
        yield client, dev_issuer(bus), bus


def test_a_disconnected_users_old_tokens_are_refused_everywhere_a_token_is_taken(
    served: tuple[TestClient, DevIssuer, Settings],
) -> None:
    client, issuer, settings = served
    root = issuer.mint("root", ["user", "admin"], tenant="acme")
    old = issuer.mint("alice", ["user"], tenant="acme")
    no_iat = without_iat(settings, "alice", "acme")
    with (
        client.websocket_connect("/ws", headers=auth_header(old)) as ws,
        client.websocket_connect("/ws", headers=auth_header(no_iat)) as bare,
    ):
        # both served before: old is in the token cache now
        assert (echo(ws, 1), echo(bare, 2)) == (1, 2)
        before = int(time.time())
        answer = disconnect(client, root, "alice")
        assert before <= answer["revoked_at"] <= time.time()
        assert answer["revoked_until"] == answer["revoked_at"] + 86400
        assert close_of(ws)[0] == close_of(bare)[0] == 4410
    for path in PATHS:
        assert refused(client, old, path) == REVOKED, path
    assert refused_first_frame(client, old) == REVOKED
    assert refused(client, no_iat) == REVOKED  # cannot say when it was issued
    rest = client.get("/me", headers=auth_header(old))
    assert rest.status_code == 401
    assert rest.json() == {"status_code": 3, "error": {"message": "token revoked"}}
    assert rest.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    # a token issued after the disconnect's second (her next login) is served
    fresh = issuer.mint("alice", ["user"], tenant="acme", now=answer["revoked_at"] + 1)
    assert client.get("/me", headers=auth_header(fresh)).json()["sub"] == "alice"
    with client.websocket_connect("/ws", headers=auth_header(fresh)) as ws:
        assert echo(ws, 3) == 3
        # refreshing that socket with the old token: refused, the socket keeps the fresh one
        answer_refresh = call(ws, AUTH_REFRESH, {"token": old}, "refresh")
        assert answer_refresh["status_code"] == 3
        assert answer_refresh["error"] == {"message": "token rejected: token revoked"}
        assert echo(ws, 4) == 4
    with client.websocket_connect(PATHS[-1], headers=auth_header(fresh)) as ws:
        assert close_of(ws) == (1008, "job not found")  # past authentication
    # bob, and alice of another tenant (another user), are not affected
    for sub, tenant in (("bob", "acme"), ("alice", "other")):
        token = issuer.mint(sub, ["user"], tenant=tenant, now=answer["revoked_at"] - 5)
        with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
            assert echo(ws, sub) == sub
        assert client.get("/me", headers=auth_header(token)).status_code == 200


def test_the_revocation_ends_after_realtime_revoke_seconds(bus: Settings) -> None:
    settings = bus.replace(revoke_seconds=3)
    with TestClient(build_app(settings)) as client:
        issuer = dev_issuer(settings)
        old = issuer.mint("alice", ["user"], tenant="acme")
        answer = disconnect(client, issuer.mint("root", ["admin"], tenant="acme"), "alice")
        assert answer["revoked_until"] == answer["revoked_at"] + 3
        assert refused(client, old) == REVOKED
        time.sleep(3.1)
        with client.websocket_connect("/ws", headers=auth_header(old)) as ws:
            assert echo(ws, 1) == 1
        assert client.get("/me", headers=auth_header(old)).status_code == 200
    if settings.redis_url is not None:
        asyncio.run(no_revocation_keys_left())


async def no_revocation_keys_left() -> None:
    """A revocation's key in Redis expires with it."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url())
    try:
        deadline = time.monotonic() + 10
        while keys := await redis.keys("realtime:revoked:*"):
            assert time.monotonic() < deadline, keys
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()


# -- two real nodes on Redis, and one started later -----------------------------------------

CLUSTER_ENV = {"REALTIME_PRESENCE_TTL": "2"}


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Node, Node, dict[str, str]]]:
    flush_redis()
    env = {"REDIS_URL": redis_url(), "DATABASE_URL": pg_url, **CLUSTER_ENV}
    with node(tmp_path, "a", **env) as a, node(tmp_path, "b", **env) as b:
        yield a, b, env


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def served_on(address: str, token: str) -> bool:
    ws = await ws_connect(address, **bearer(token))
    try:
        reply = await ws_call(ws, ECHO, {"v": 1}, "e")
        return bool(reply.get("data") == {"v": 1})
    finally:
        await ws.close()


async def refused_on(address: str, token: str) -> tuple[int, str]:
    ws = await ws_connect(address, **bearer(token))
    return await ws_closed(ws)


async def rest_me(address: str, token: str) -> tuple[int, Any]:
    import httpx

    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://{address}/me", headers=auth_header(token))
    return answer.status_code, answer.json()


@pytest.mark.anyio
async def test_old_tokens_are_refused_on_every_node_and_on_one_started_later(
    cluster: tuple[Node, Node, dict[str, str]], tmp_path: Path
) -> None:
    a, b, env = cluster
    old = mint(tmp_path, "alice")
    others = [mint(tmp_path, "bob"), mint(tmp_path, "alice", tenant="other")]
    on_b = await ws_connect(b.address, **bearer(old))
    assert await served_on(a.address, old) and await served_on(b.address, old)
    admin = await ws_connect(a.address, **bearer(mint(tmp_path, "root", "user,admin")))
    answer = (await ws_call(admin, SESSIONS_DISCONNECT, {"sub": "alice"}))["data"]
    assert (answer["closed"], answer["nodes"], answer["unanswered_nodes"]) == (1, 2, 0)
    assert await ws_closed(on_b) == (4410, "disconnected by an administrator")
    # node b heard it (its socket was closed by the order that carried the revocation)
    for address in (a.address, b.address):
        assert await refused_on(address, old) == REVOKED
        assert await rest_me(address, old) == (
            401,
            {"status_code": 3, "error": {"message": "token revoked"}},
        )
    issuer = DevIssuer.load_or_create(
        str(tmp_path / "dev-key.json"), audience="realtime", client_id="realtime"
    )
    fresh = issuer.mint("alice", ["user"], tenant="acme", now=answer["revoked_at"] + 1)
    for address in (a.address, b.address):
        assert await served_on(address, fresh)
        assert all([await served_on(address, token) for token in others])
        assert (await rest_me(address, fresh))[0] == 200
    await admin.close()
    # a node started after the disconnect loads it from Redis before it serves
    with node(tmp_path, "c", **env) as c:
        assert await refused_on(c.address, old) == REVOKED
        assert await served_on(c.address, fresh)
        assert all([await served_on(c.address, token) for token in others])


def test_a_node_whose_subscription_failed_loads_the_orders_it_missed(tmp_path: Path) -> None:
    """Node x's Redis is cut while node y disconnects alice: x did not hear the order (it
    still serves her old token, the window this leaves); once Redis is back, x subscribes
    again, loads the revocations from Redis, and refuses it."""
    flush_redis()
    settings = make_settings(tmp_path, redis_url=redis_url(), redis_timeout=0.5)
    issuer = dev_issuer(settings)
    old = issuer.mint("alice", ["user"], tenant="acme")
    root = issuer.mint("root", ["admin"], tenant="acme")
    with running_proxy(redis_url()) as proxy:
        on_proxy = settings.replace(redis_url=proxy.url(redis_url()))
        with TestClient(build_app(on_proxy)) as x, TestClient(build_app(settings)) as y:
            assert outcome(x, old) == outcome(y, old) == "served"
            held = x.websocket_connect("/ws", headers=auth_header(old)).__enter__()
            assert echo(held, 1) == 1
            proxy.cut()
            answer = disconnect(y, root, "alice")
            assert answer["nodes"] == 1  # y alone heard it
            assert outcome(y, old) == REVOKED
            assert outcome(x, old) == "served"  # x never heard it
            proxy.restore()
            deadline = time.monotonic() + 15
            while outcome(x, old) != REVOKED:  # loaded once its subscription is back
                assert time.monotonic() < deadline, "x never loaded the revocation"
                time.sleep(0.1)
            assert x.get("/me", headers=auth_header(old)).status_code == 401
            # the socket x kept open through the order it missed is closed once it knows
            assert close_of(held)[0] == 4410
            held.__exit__(None, None, None)
            fresh = issuer.mint("alice", ["user"], tenant="acme", now=answer["revoked_at"] + 1)
            assert outcome(x, fresh) == "served"

"""PROTOCOL.md 1.1 against a real OpenID provider over HTTP (discovery + JWKS + token)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from realtime.auth.dev import DevIssuer
from tests.conftest import build_app, make_settings, serve
from tests.helpers import ws_call, ws_closed, ws_connect
from tests.oidc import Provider, new_key, running_provider

pytestmark = pytest.mark.anyio
ECHO, ME, REFRESH = 40, 41, 42


@pytest.fixture
def provider() -> Iterator[Provider]:
    with running_provider() as running:
        yield running


def keycloak_server(tmp_path: Path, provider: Provider, **changes: object):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, keycloak_issuer=provider.issuer, **changes)
    return serve(build_app(settings))


@pytest.fixture
def server(tmp_path: Path, provider: Provider) -> Iterator[str]:
    with keycloak_server(tmp_path, provider) as address:
        yield address


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(provider: Provider) -> str:
    """Algorithm confusion: HMAC keyed with the RSA public key the server trusts."""
    public_pem = provider.signing_key.as_pem(private=False)
    head = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    body = b64(json.dumps(provider.claims()).encode())
    signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


BAD_TOKENS = {
    "expired": (lambda p: p.mint(exp=int(time.time()) - 3600), "token expired"),
    "not yet valid": (lambda p: p.mint(nbf=int(time.time()) + 3600), "token not yet valid"),
    "wrong issuer": (lambda p: p.mint(iss="http://evil.example/realms/test"), "wrong issuer"),
    "wrong audience": (lambda p: p.mint(aud="other", azp="other"), "wrong audience"),
    "foreign key": (lambda p: p.mint(key=new_key("k1")), "invalid signature"),
    "unknown kid": (lambda p: p.mint(key=new_key("nope")), "unknown signing key"),
    "alg none": (
        lambda p: unsigned({"alg": "none", "kid": "k1"}, p.claims()),
        "algorithm not allowed",
    ),
    "hs256 confusion": (hs256_with_public_key, "algorithm not allowed"),
    "no kid": (lambda p: p.mint(header={"kid": None}), "token has no kid"),
    "id token": (lambda p: p.mint(typ="ID"), "not an access token"),
    "no sub": (lambda p: p.mint(sub=None), "missing claim sub"),
    "no exp": (lambda p: p.mint(exp=None), "missing claim exp"),
    "garbage": (lambda p: "not-a-jwt", "malformed token"),
    "garbage 3 parts": (lambda p: "a.b.c", "malformed token"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_token_at_handshake_closes_4401(
    server: str, provider: Provider, case: str
) -> None:
    make, reason = BAD_TOKENS[case]
    ws = await ws_connect(server, additional_headers={"Authorization": f"Bearer {make(provider)}"})
    assert await ws_closed(ws) == (4401, reason)


async def test_four_ways_to_present_a_token(server: str, provider: Provider) -> None:
    token = provider.mint()
    header = await ws_connect(server, additional_headers={"Authorization": f"Bearer {token}"})
    protocol = await ws_connect(server, subprotocols=["realtime.v1", f"bearer.{token}"])
    query = await ws_connect(server, f"/ws?token={token}")
    first_frame = await ws_connect(server)
    answer = await ws_call(first_frame, REFRESH, {"token": token}, req_id="auth")
    assert answer["status_code"] == 0 and answer["data"]["sub"] == "u-123"
    assert protocol.subprotocol == "realtime.v1"  # the token is never echoed
    for ws in (header, protocol, query, first_frame):
        assert (await ws_call(ws, ECHO, {"k": 1}))["data"] == {"k": 1}
        await ws.close()


async def test_bad_token_in_each_position_closes_4401(server: str, provider: Provider) -> None:
    bad = provider.mint(exp=int(time.time()) - 3600)
    sockets = [
        await ws_connect(server, subprotocols=["realtime.v1", f"bearer.{bad}"]),
        await ws_connect(server, f"/ws?token={bad}"),
    ]
    first_frame = await ws_connect(server)
    await first_frame.send(json.dumps({"pkg_id": REFRESH, "req_id": "a", "data": {"token": bad}}))
    for ws in [*sockets, first_frame]:
        assert await ws_closed(ws) == (4401, "token expired")


async def test_first_frame_other_than_auth_refresh_closes_4401(server: str) -> None:
    ws = await ws_connect(server)
    await ws.send(json.dumps({"pkg_id": ECHO, "req_id": "a", "data": {}}))
    assert await ws_closed(ws) == (4401, "the first frame must be auth.refresh")


async def test_no_frame_within_auth_timeout_closes_4401(tmp_path: Path, provider: Provider) -> None:
    with keycloak_server(tmp_path, provider, auth_timeout=0.3) as address:
        ws = await ws_connect(address)
        assert await ws_closed(ws) == (4401, "no token received in time")


async def test_keycloak_claims_map_to_the_principal(server: str, provider: Provider) -> None:
    ws = await ws_connect(server, additional_headers={"Authorization": f"Bearer {provider.mint()}"})
    me = (await ws_call(ws, ME))["data"]
    await ws.close()
    assert me["sub"] == "u-123" and me["username"] == "carol" and me["tenant_id"] == "acme"
    assert me["email"] == "carol@example.com" and me["name"] == "Carol C"
    assert me["realm_roles"] == ["offline_access", "user"]
    assert me["client_roles"] == {"realtime": ["editor"], "account": ["x"]}
    assert me["roles"] == ["editor", "offline_access", "user"]  # realm + our client only


async def test_no_tenant_claim_is_the_personal_tenant(server: str, provider: Provider) -> None:
    ws = await ws_connect(
        server, additional_headers={"Authorization": f"Bearer {provider.mint(tenant_id=None)}"}
    )
    assert (await ws_call(ws, ME))["data"]["tenant_id"] == "user:u-123"
    await ws.close()


async def test_audience_in_azp_only_when_configured(tmp_path: Path, provider: Provider) -> None:
    token = provider.mint(aud="account", azp="realtime")
    with keycloak_server(tmp_path, provider) as strict:
        ws = await ws_connect(strict, additional_headers={"Authorization": f"Bearer {token}"})
        assert await ws_closed(ws) == (4401, "wrong audience")
    with keycloak_server(tmp_path, provider, audience_in_azp=True) as lenient:
        ws = await ws_connect(lenient, additional_headers={"Authorization": f"Bearer {token}"})
        assert (await ws_call(ws, ECHO))["status_code"] == 0
        await ws.close()


async def test_dev_issuer_tokens_are_rejected_when_keycloak_is_configured(
    tmp_path: Path, provider: Provider, server: str
) -> None:
    dev = DevIssuer.load_or_create(
        str(tmp_path / "dev-key.json"), audience="realtime", client_id="realtime"
    )
    ws = await ws_connect(
        server,
        additional_headers={"Authorization": f"Bearer {dev.mint('alice', ['user', 'admin'])}"},
    )
    code, _ = await ws_closed(ws)
    assert code == 4401


async def test_jwks_fetched_once_for_many_sockets(server: str, provider: Provider) -> None:
    token = provider.mint()
    sockets = await asyncio.gather(
        *[
            ws_connect(server, additional_headers={"Authorization": f"Bearer {token}"})
            for _ in range(20)
        ]
    )
    answers = await asyncio.gather(*[ws_call(ws, ECHO) for ws in sockets])
    assert [a["status_code"] for a in answers] == [0] * 20
    assert provider.jwks_hits == 1
    await asyncio.gather(*[ws.close() for ws in sockets])


async def test_random_kids_do_not_hammer_the_issuer(server: str, provider: Provider) -> None:
    sockets = [
        await ws_connect(
            server,
            additional_headers={
                "Authorization": f"Bearer {provider.mint(key=new_key(secrets.token_hex(4)))}"
            },
        )
        for _ in range(25)
    ]
    codes = [(await ws_closed(ws))[0] for ws in sockets]
    assert codes == [4401] * 25
    assert provider.jwks_hits == 1  # one fetch per REALTIME_JWKS_MIN_REFRESH (10 s)


async def test_rotation_to_a_new_kid_is_picked_up(tmp_path: Path, provider: Provider) -> None:
    with keycloak_server(tmp_path, provider, jwks_min_refresh=0.2) as address:
        old = await ws_connect(
            address, additional_headers={"Authorization": f"Bearer {provider.mint()}"}
        )
        assert (await ws_call(old, ECHO))["status_code"] == 0
        provider.rotate("k2")
        await asyncio.sleep(0.3)
        new = await ws_connect(
            address, additional_headers={"Authorization": f"Bearer {provider.mint()}"}
        )
        assert (await ws_call(new, ME))["status_code"] == 0
        assert provider.jwks_hits == 2
        for ws in (old, new):
            await ws.close()


async def test_cached_keys_survive_the_issuer_being_down(
    tmp_path: Path, provider: Provider
) -> None:
    with keycloak_server(tmp_path, provider, jwks_min_refresh=0.1, jwks_max_age=0.2) as address:
        first = await ws_connect(
            address, additional_headers={"Authorization": f"Bearer {provider.mint()}"}
        )
        assert (await ws_call(first, ECHO))["status_code"] == 0
        provider.down = True
        await asyncio.sleep(0.3)  # the cache is stale: the refetch fails, cached keys stay
        second = await ws_connect(
            address, additional_headers={"Authorization": f"Bearer {provider.mint()}"}
        )
        assert (await ws_call(second, ECHO))["status_code"] == 0
        unknown = await ws_connect(
            address,
            additional_headers={"Authorization": f"Bearer {provider.mint(key=new_key('k9'))}"},
        )
        assert await ws_closed(unknown) == (4401, "unknown signing key")
        for ws in (first, second):
            await ws.close()


async def test_login_uses_the_password_grant(server: str, provider: Provider) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as http:
        ok = await http.post("/auth/login", json={"username": "carol", "password": "s3cret"})
        wrong = await http.post("/auth/login", json={"username": "carol", "password": "nope"})
        nobody = await http.post("/auth/login", json={"username": "eve", "password": "s3cret"})
        provider.down = True
        down = await http.post("/auth/login", json={"username": "carol", "password": "s3cret"})
    assert ok.status_code == 200
    assert set(ok.json()) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert wrong.status_code == nobody.status_code == 401
    assert (
        wrong.json()
        == nobody.json()
        == {"status_code": 3, "error": {"message": "invalid credentials"}}
    )
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    provider.down = False
    ws = await ws_connect(
        server, additional_headers={"Authorization": f"Bearer {ok.json()['access_token']}"}
    )
    assert (await ws_call(ws, ME))["data"]["username"] == "carol"
    await ws.close()

"""Token lifetime on a socket, auth.refresh, Origin checks, dev login (PROTOCOL.md 1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.socket.connection import forget_token
from tests.conftest import build_app, make_settings
from tests.helpers import auth_header, call, close_of

ECHO, ME, REFRESH = 40, 41, 42


@pytest.fixture
def short_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, expiry_warning=1.0)
    with TestClient(build_app(settings)) as client:
        yield client


def test_expiring_event_then_close_4401_at_exp(short_client: TestClient, issuer: DevIssuer) -> None:
    token = issuer.mint("alice", ["user"], ttl=2)
    with short_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        started = time.monotonic()
        event = ws.receive_json()
        assert event["event"] == "auth.expiring"
        assert event["data"]["expires_in"] in (0, 1)
        assert close_of(ws) == (4401, "token expired")
        assert time.monotonic() - started < 5


def test_refresh_extends_the_socket(short_client: TestClient, issuer: DevIssuer) -> None:
    with short_client.websocket_connect(
        "/ws", headers=auth_header(issuer.mint("alice", ["user"], ttl=2))
    ) as ws:
        assert ws.receive_json()["event"] == "auth.expiring"
        fresh = issuer.mint("alice", ["user", "admin"], ttl=600)
        answer = call(ws, REFRESH, {"token": fresh}, req_id="refresh")
        assert answer["status_code"] == 0
        assert answer["data"]["sub"] == "alice"
        assert answer["data"]["expires_at"] >= int(time.time()) + 590
        time.sleep(2.5)  # past the first token's exp
        me = call(ws, ME)
        assert me["status_code"] == 0 and "admin" in me["data"]["roles"]  # new roles apply


def test_refresh_for_another_subject_is_refused(
    short_client: TestClient, issuer: DevIssuer, token: str
) -> None:
    with short_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        other = call(ws, REFRESH, {"token": issuer.mint("mallory", ["user", "admin"])})
        # the same sub in another tenant is another caller
        elsewhere = call(ws, REFRESH, {"token": issuer.mint("alice", ["user"], tenant="zeta")})
        bad = call(ws, REFRESH, {"token": "garbage"})
        missing = call(ws, REFRESH, {})
        assert other["status_code"] == elsewhere["status_code"] == 3
        assert other["error"]["message"] == "token rejected: it belongs to another subject"
        assert elsewhere["error"] == other["error"]
        assert (
            bad["status_code"] == 3 and bad["error"]["message"] == "token rejected: malformed token"
        )
        assert missing["status_code"] == 2
        assert call(ws, ME)["data"]["sub"] == "alice"


def test_first_frame_binary_closes_4401(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.send_bytes(b"\x01")
        assert close_of(ws)[0] == 4401


def test_first_frame_garbage_closes_4401(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.send_text("{nope")
        assert close_of(ws) == (4401, "the first frame must be auth.refresh")


def test_same_origin_by_default(client: TestClient, token: str) -> None:
    headers = auth_header(token)
    with client.websocket_connect(
        "/ws", headers={**headers, "Origin": "http://evil.example"}
    ) as ws:
        assert close_of(ws) == (4403, "origin not allowed")
    same = {**headers, "Origin": "http://testserver"}
    with client.websocket_connect("/ws", headers=same) as ws:
        assert call(ws, ECHO)["status_code"] == 0
    with client.websocket_connect("/ws", headers=headers) as ws:  # no Origin: not a browser
        assert call(ws, ECHO)["status_code"] == 0


def test_allowed_origins_list_and_star(tmp_path: Path, issuer_token: str) -> None:
    headers = auth_header(issuer_token)
    listed = make_settings(tmp_path, allowed_origins=("https://app.example",))
    with TestClient(build_app(listed)) as client:
        good = {**headers, "Origin": "https://app.example"}
        with client.websocket_connect("/ws", headers=good) as ws:
            assert call(ws, ECHO)["status_code"] == 0
        for origin in ("http://testserver", "https://app.example.evil"):
            with client.websocket_connect("/ws", headers={**headers, "Origin": origin}) as ws:
                assert close_of(ws)[0] == 4403
    anyone = make_settings(tmp_path, allowed_origins=("*",))
    with TestClient(build_app(anyone)) as client:
        evil = {**headers, "Origin": "http://evil.example"}
        with client.websocket_connect("/ws", headers=evil) as ws:
            assert call(ws, ECHO)["status_code"] == 0


def test_forbidden_origin_is_refused_before_auth(client: TestClient) -> None:
    with client.websocket_connect("/ws?token=garbage", headers={"Origin": "http://evil"}) as ws:
        assert close_of(ws)[0] == 4403


def test_dev_login(client: TestClient) -> None:
    ok = client.post("/auth/login", json={"username": "alice", "password": "alice"})
    wrong = client.post("/auth/login", json={"username": "alice", "password": "bob"})
    nobody = client.post("/auth/login", json={"username": "eve", "password": "alice"})
    malformed = client.post("/auth/login", content=b"{")
    assert ok.status_code == 200 and ok.json()["token_type"] == "Bearer"
    assert wrong.status_code == nobody.status_code == 401
    assert wrong.json() == nobody.json()
    assert malformed.status_code == 422
    me = client.get("/me", headers=auth_header(ok.json()["access_token"])).json()
    assert me["username"] == "alice" and me["tenant_id"] == "acme" and me["roles"] == ["user"]


def test_dev_tokens_survive_a_restart(tmp_path: Path, issuer_token: str) -> None:
    settings = make_settings(tmp_path)
    for _ in range(2):
        with TestClient(build_app(settings)) as client:
            assert client.get("/me", headers=auth_header(issuer_token)).status_code == 200


def test_the_token_leaves_the_scope_once_verified() -> None:
    """An idle socket keeps no copy of its bearer token (header or subprotocol); the
    other headers and subprotocols stay."""
    scope = {
        "headers": [
            (b"host", b"example.com"),
            (b"authorization", b"Bearer abc.def.ghi"),
            (b"sec-websocket-protocol", b"realtime.v1, bearer.abc.def.ghi"),
            (b"origin", b"https://example.com"),
        ],
        "subprotocols": ["realtime.v1", "bearer.abc.def.ghi"],
    }
    forget_token(scope)
    assert scope == {
        "headers": [(b"host", b"example.com"), (b"origin", b"https://example.com")],
        "subprotocols": ["realtime.v1"],
    }

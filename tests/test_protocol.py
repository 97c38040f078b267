"""PROTOCOL.md 2: envelope, every status code, concurrency (in-process)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import build_app, make_settings
from tests.helpers import auth_header, call, close_of, request, ws_call, ws_connect

ECHO, ME, REFRESH = 40, 41, 42
SLEEP, BOOM, MISSING, CONFLICT, UNAVAILABLE, ADMIN, NUMBERS, EMIT, NOBODY = (
    900,
    901,
    902,
    903,
    904,
    905,
    906,
    909,
    910,
)


def test_ok_echo_returns_same_object_and_req_id(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, ECHO, {"a": [1, 2, {"b": None}], "ünï": "ok"}, req_id="x" * 64)
    assert answer == {
        "pkg_id": ECHO,
        "req_id": "x" * 64,
        "status_code": 0,
        "data": {"a": [1, 2, {"b": None}], "ünï": "ok"},
    }


def test_absent_data_means_empty_object(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        assert call(ws, ECHO)["data"] == {}
        assert call(ws, ME)["data"]["sub"] == "alice"


def test_error_is_generic_and_server_keeps_serving(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, BOOM, req_id="b1")
        assert answer["status_code"] == 1
        assert answer["error"] == {"message": "internal error"}
        assert "data" not in answer
        assert "SELECT" not in json.dumps(answer) and "Traceback" not in json.dumps(answer)
        assert call(ws, ECHO, {"still": "open"})["data"] == {"still": "open"}


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1, 2]",
        '"text"',
        "{}",
        '{"pkg_id": 40}',
        '{"pkg_id": 40, "req_id": ""}',
        '{"pkg_id": 40, "req_id": 7}',
        '{"pkg_id": 40, "req_id": "' + "x" * 65 + '"}',
    ],
)
def test_unusable_frame_is_invalid_data_with_null_req_id(
    client: TestClient, token: str, frame: str
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ws.send_text(frame)
        answer = ws.receive_json()
        assert answer["status_code"] == 2 and answer["req_id"] is None
        assert call(ws, ECHO, {"n": 1})["status_code"] == 0  # still open


@pytest.mark.parametrize(
    "frame",
    [
        {"pkg_id": "40", "req_id": "r"},
        {"pkg_id": True, "req_id": "r"},
        {"pkg_id": 40, "req_id": "r", "data": [1]},
        {"pkg_id": 40, "req_id": "r", "data": "x"},
    ],
)
def test_bad_envelope_field_keeps_req_id(client: TestClient, token: str, frame: dict) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ws.send_text(json.dumps(frame))
        answer = ws.receive_json()
    assert answer["status_code"] == 2 and answer["req_id"] == "r"


def test_schema_failure_lists_each_failing_field(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, NUMBERS, {"total": -1, "per_page": 101, "page": 0})
    assert answer["status_code"] == 2
    paths = sorted(detail["path"] for detail in answer["error"]["details"])
    assert paths == ["/page", "/per_page", "/total"]
    assert all(detail["reason"] for detail in answer["error"]["details"])


def test_missing_required_field_is_reported(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, SLEEP, {})
    assert answer["status_code"] == 2
    assert answer["error"]["details"] == [
        {"path": "/", "reason": '"seconds" is a required property'}
    ]


def test_permission_denied_for_role_and_for_package_without_entry(
    client: TestClient, token: str, admin_token: str
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        assert call(ws, ADMIN)["status_code"] == 3
        assert call(ws, NOBODY)["status_code"] == 3
    with client.websocket_connect("/ws", headers=auth_header(admin_token)) as ws:
        assert call(ws, ADMIN) == {
            "pkg_id": ADMIN,
            "req_id": "r1",
            "status_code": 0,
            "data": {"ok": True},
        }
        assert call(ws, NOBODY)["status_code"] == 3  # default deny, even for admins


def test_not_found_conflict_unavailable(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        assert call(ws, MISSING)["status_code"] == 4
        assert call(ws, CONFLICT)["error"] == {"message": "the thing changed meanwhile"}
        answer = call(ws, UNAVAILABLE)
    assert answer["status_code"] == 9
    assert answer["error"]["details"] == {"retry_after": 3}


def test_unknown_package(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, 12345, req_id="u")
    assert answer["status_code"] == 6 and answer["req_id"] == "u" and answer["pkg_id"] == 12345


def test_timeout_when_handler_runs_past_deadline(tmp_path: Path, issuer_token: str) -> None:
    settings = make_settings(tmp_path, handler_timeout=0.2)
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=auth_header(issuer_token)) as ws,
    ):
        answer = call(ws, SLEEP, {"seconds": 5})
        assert answer["status_code"] == 7
        assert call(ws, SLEEP, {"seconds": 0})["status_code"] == 0


def test_rate_limited_then_sustained_violation_closes_4429(
    tmp_path: Path, issuer_token: str
) -> None:
    """RATE_LIMITED with retry_after; a burst right after it is answered, not punished; a
    client that keeps sending once that retry_after has passed is closed with 4429."""
    settings = make_settings(tmp_path, rate_limit=1.0, rate_burst=3, max_rate_limited=5)
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=auth_header(issuer_token)) as ws,
    ):
        codes = [call(ws, ECHO, req_id=str(i))["status_code"] for i in range(3)]
        limited = call(ws, ECHO, req_id="over")
        assert codes == [0, 0, 0]
        assert limited["status_code"] == 5 and limited["error"]["details"]["retry_after"] >= 1
        burst = [call(ws, ECHO, req_id=f"burst{i}")["status_code"] for i in range(10)]
        assert burst == [5] * 10
        closed = None
        for i in range(500):  # every 10 ms, for at most 5 s, whatever it is told
            request(ws, ECHO, req_id=f"more{i}")
            message = ws.receive()
            if message["type"] == "websocket.close":
                closed = message["code"]
                break
            time.sleep(0.01)
        assert closed == 4429


def test_in_flight_cap_answers_rate_limited_at_once(tmp_path: Path, issuer_token: str) -> None:
    settings = make_settings(tmp_path, max_inflight=2)
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=auth_header(issuer_token)) as ws,
    ):
        request(ws, SLEEP, {"seconds": 0.5}, req_id="s1")
        request(ws, SLEEP, {"seconds": 0.5}, req_id="s2")
        request(ws, SLEEP, {"seconds": 0.5}, req_id="s3")
        first = ws.receive_json()
        assert first["req_id"] == "s3" and first["status_code"] == 5
        assert sorted(ws.receive_json()["req_id"] for _ in range(2)) == ["s1", "s2"]


def test_requests_run_concurrently_and_answer_out_of_order(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        started = time.monotonic()
        request(ws, SLEEP, {"seconds": 0.6}, req_id="slow")
        for i in range(5):
            request(ws, SLEEP, {"seconds": 0.3}, req_id=f"fast{i}")
        order = [ws.receive_json()["req_id"] for _ in range(6)]
        elapsed = time.monotonic() - started
    assert order[-1] == "slow" and sorted(order[:5]) == [f"fast{i}" for i in range(5)]
    assert elapsed < 3 * 0.6  # concurrent, not 6 sleeps in a row


def test_handler_can_push_an_event_before_its_answer(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        request(ws, EMIT)
        assert ws.receive_json() == {"event": "test.event", "data": {"n": 1}}
        assert ws.receive_json()["data"] == {"emitted": True}


def test_binary_frame_closes_1003(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ws.send_bytes(b"\x00\x01")
        assert close_of(ws)[0] == 1003


def test_repeated_invalid_frames_close_1008(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for _ in range(10):
            ws.send_text("nope")
        answers = [ws.receive_json() for _ in range(10)]
        assert {a["status_code"] for a in answers} == {2}
        assert close_of(ws)[0] == 1008


def test_valid_frames_reset_the_invalid_count(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for _ in range(3):
            for _ in range(9):
                ws.send_text("nope")
                assert ws.receive_json()["status_code"] == 2
            assert call(ws, ECHO)["status_code"] == 0


def test_oversized_frame_closes_1009(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        assert call(ws, ECHO, {"pad": "x" * 60_000})["status_code"] == 0
        request(ws, ECHO, {"pad": "x" * 70_000})
        assert close_of(ws)[0] == 1009


@pytest.mark.anyio
async def test_client_close_is_normal_1000(server: str, token: str) -> None:
    """The client closes with 1000: the server answers the close handshake with 1000 (and
    cancels what the socket had in flight), then serves the next socket as before."""
    ws = await ws_connect(server, additional_headers=auth_header(token))
    assert (await ws_call(ws, ECHO))["status_code"] == 0
    await ws.send(json.dumps({"pkg_id": SLEEP, "req_id": "slow", "data": {"seconds": 5}}))
    await ws.close(1000, "bye")
    assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1000
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    again = await ws_connect(server, additional_headers=auth_header(token))
    assert (await ws_call(again, ECHO, {"n": 2}))["data"] == {"n": 2}
    await again.close()


def test_web_alias_and_echo_compat_socket(client: TestClient, token: str) -> None:
    with client.websocket_connect("/web", headers=auth_header(token)) as ws:
        assert call(ws, ECHO, {"v": 1})["data"] == {"v": 1}
    with client.websocket_connect("/ws/echo", headers=auth_header(token)) as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "Echo: hello"


def test_echo_compat_socket_requires_auth(client: TestClient) -> None:
    with client.websocket_connect("/ws/echo?token=garbage") as ws:
        assert close_of(ws)[0] == 4401


def test_frame_without_req_id_still_echoes_an_integer_pkg_id(
    client: TestClient, token: str
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ws.send_text('{"pkg_id": 40}')
        answer = ws.receive_json()
    assert answer["status_code"] == 2 and answer["req_id"] is None and answer["pkg_id"] == 40


def test_answer_that_is_not_json_is_an_error_not_a_lost_answer(
    client: TestClient, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for pkg_id in (913, 914):  # a plain def and an async def returning a set
            answer = call(ws, pkg_id, req_id=f"bad{pkg_id}")
            assert answer["status_code"] == 1 and answer["req_id"] == f"bad{pkg_id}"
        assert call(ws, ECHO, {"still": 1})["data"] == {"still": 1}
    assert "answered data that is not JSON (req_id bad913)" in caplog.text
    assert client.get("/test/not-json", headers=auth_header(token)).json() == {
        "status_code": 1,
        "error": {"message": "internal error"},
    }


def test_error_is_logged_with_package_and_req_id(
    client: TestClient, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        call(ws, BOOM, req_id="trace-me")
    assert "package test.boom failed (req_id trace-me)" in caplog.text

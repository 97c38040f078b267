"""Issue 11, item 11: bad JSON costs no more than an INVALID_DATA answer.

Before: `POST /auth/login` with deeply nested JSON was a 500 with a traceback; valid JSON
nested ~255+ levels inside a frame's `data` reached the handler and failed when the
answer was encoded (ERROR and a traceback per frame); integers outside 64 bits were
silently turned into floats. Now JSON nested deeper than 128 levels, and integers
outside -2**63 .. 2**64-1, are INVALID_DATA (422 over REST) before anything runs. And a
text frame of invalid UTF-8 (closed 1007 by uvicorn) no longer logs an ERROR traceback
per connection."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from websockets.frames import Frame, Opcode

from tests.helpers import auth_header, call, ws_call, ws_closed, ws_connect
from tests.nodes import Node, mint, node

ECHO = 40
TOO_DEEP = "JSON nested deeper than 128 levels"
INT_RANGE = "integer outside the 64-bit range (-2^63 to 2^64-1)"


def nested(levels: int) -> str:
    """`levels` arrays, one inside the other, as JSON text."""
    return "[" * levels + "]" * levels


def frame(data_json: str, req_id: str = "r1") -> str:
    return f'{{"pkg_id": {ECHO}, "req_id": "{req_id}", "data": {data_json}}}'


def test_deeply_nested_login_bodies_are_422(client: TestClient) -> None:
    cases = {
        nested(100_000): "request body is not valid JSON",  # over orjson's own 1024 levels
        nested(300): f"request body: {TOO_DEEP}",
        nested(100): "request body must be a JSON object",
        f'{{"username": {nested(300)}, "password": "alice"}}': f"request body: {TOO_DEEP}",
        f'{{"username": {nested(2000)}, "password": "alice"}}': "request body is not valid JSON",
    }
    for body, message in cases.items():
        answer = client.post("/auth/login", content=body)
        assert (answer.status_code, answer.json()) == (
            422,
            {"status_code": 2, "error": {"message": message}},
        ), body[:40]
    control = client.post("/auth/login", json={"username": "alice", "password": "alice"})
    assert control.status_code == 200


def test_rest_bodies_over_the_limits_are_422_before_the_schema(
    client: TestClient, token: str
) -> None:
    headers = {**auth_header(token), "Content-Type": "application/json"}
    cases = {
        f'{{"name": "x", "d": {nested(200)}}}': f"request body: {TOO_DEEP}",
        '{"name": "x", "n": 18446744073709551616}': f"request body: {INT_RANGE}",
        '{"name": "x", "n": -9223372036854775809}': f"request body: {INT_RANGE}",
    }
    for body, message in cases.items():
        answer = client.post("/projects", content=body, headers=headers)
        assert (answer.status_code, answer.json()["error"]["message"]) == (422, message)
    assert client.post("/projects", json={"name": "control"}, headers=headers).status_code == 201


def test_a_frame_nested_too_deep_is_invalid_data_without_a_traceback(
    client: TestClient, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        # the frame is level 1 and `data` level 2: 126 more arrays make exactly 128
        at_limit = json.loads(nested(126))
        for req_id, data in [("deep-1", nested(127)), ("deep-2", nested(300))]:
            ws.send_text(frame(f'{{"d": {data}}}', req_id))
            assert ws.receive_json() == {
                "pkg_id": ECHO,
                "req_id": req_id,
                "status_code": 2,
                "error": {"message": TOO_DEEP},
            }
        ws.send_text(frame(f'{{"d": {nested(126)}}}', "at-limit"))
        assert ws.receive_json()["data"] == {"d": at_limit}
        assert call(ws, ECHO, {"control": 1})["data"] == {"control": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_integers_outside_64_bits_are_refused_and_the_rest_kept_exactly(
    client: TestClient, token: str
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for req_id, literal in [
            ("over", "18446744073709551616"),
            ("under", "-9223372036854775809"),
            ("huge", "1" + "0" * 40),
        ]:
            ws.send_text(frame(f'{{"n": {literal}}}', req_id))
            assert ws.receive_json() == {
                "pkg_id": ECHO,
                "req_id": req_id,
                "status_code": 2,
                "error": {"message": INT_RANGE},
            }
        kept = (
            '{"max": 18446744073709551615, "min": -9223372036854775808, '
            '"digits": "123456789012345678901234567890", "real": 12345678901234567890.5, '
            '"exp": 1e25, "ns": 1733040000123456789}'
        )
        ws.send_text(frame(kept, "kept"))
        answer = ws.receive_json()
        assert answer["status_code"] == 0
        assert answer["data"] == {
            "max": 2**64 - 1,
            "min": -(2**63),
            "digits": "123456789012345678901234567890",
            "real": 12345678901234567890.5,
            "exp": 1e25,
            "ns": 1733040000123456789,
        }
        assert type(answer["data"]["max"]) is int and type(answer["data"]["ns"]) is int


def test_refused_frames_count_as_invalid_frames(client: TestClient, token: str) -> None:
    """Refusing is no way around REALTIME_MAX_INVALID_FRAMES (10): the tenth closes 1008."""
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for n in range(10):
            ws.send_text(frame('{"n": 99999999999999999999}', f"big-{n}"))
            assert ws.receive_json()["status_code"] == 2
        message = ws.receive()
        assert (message["type"], message["code"]) == ("websocket.close", 1008)


@pytest.fixture
def info_node(tmp_path: Path) -> Iterator[Node]:
    with node(tmp_path, "info") as served:  # REALTIME_LOG_LEVEL's default: info
        yield served


async def send_invalid_utf8(ws: Any) -> None:
    """A text frame whose payload is not UTF-8 (websockets would not send one)."""
    ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"pkg_id": 40, "data": "\xff\xfe"}'))
    ws.send_data()


@pytest.mark.anyio
async def test_invalid_utf8_closes_1007_with_one_info_line_and_no_traceback(
    tmp_path: Path, info_node: Node
) -> None:
    token = mint(tmp_path, "alice")
    bearer = {"additional_headers": {"Authorization": f"Bearer {token}"}}
    sockets = [await ws_connect(info_node.address) for _ in range(3)]  # unauthenticated
    sockets += [await ws_connect(info_node.address, **bearer) for _ in range(3)]
    for ws in sockets:
        await send_invalid_utf8(ws)
    assert [(await ws_closed(ws))[0] for ws in sockets] == [1007] * 6
    control = await ws_connect(info_node.address, **bearer)
    assert (await ws_call(control, ECHO, {"control": 1}))["data"] == {"control": 1}
    await control.close()
    output = info_node.output()  # each line is written before its close frame is sent
    lines = [line for line in output.splitlines() if "Invalid UTF-8" in line]
    assert lines == ["INFO:     Invalid UTF-8 sequence received from client."] * 6
    assert "Traceback" not in output and "ERROR" not in output

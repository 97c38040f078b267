"""Small client-side helpers shared by the tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.testclient import WebSocketTestSession


def request(ws: WebSocketTestSession, pkg_id: int, data: Any = None, req_id: str = "r1") -> None:
    frame: dict[str, Any] = {"pkg_id": pkg_id, "req_id": req_id}
    if data is not None:
        frame["data"] = data
    ws.send_text(json.dumps(frame))


def call(ws: WebSocketTestSession, pkg_id: int, data: Any = None, req_id: str = "r1") -> Any:
    request(ws, pkg_id, data, req_id)
    return ws.receive_json()


def close_of(ws: WebSocketTestSession) -> tuple[int, str]:
    """Read until the server's close frame; returns (code, reason)."""
    for _ in range(10_000):
        message = ws.receive()
        if message["type"] == "websocket.close":
            return message["code"], message.get("reason", "")
    raise AssertionError("the server did not close the socket")


def echo(ws: WebSocketTestSession, value: Any) -> Any:
    """One `echo` (40) answered OK on a TestClient socket: the value it carried back."""
    answer = call(ws, 40, {"v": value}, f"e{value}")
    assert answer["status_code"] == 0, answer
    return answer["data"]["v"]


def dev_issuer(settings: Any) -> Any:
    """The development issuer of these settings (its key file), to mint tokens with."""
    from realtime.auth.dev import DevIssuer

    return DevIssuer.load_or_create(
        settings.dev_key_file,
        audience=settings.keycloak_audience,
        client_id=settings.keycloak_client_id,
    )


def auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ws_connect(address: str, path: str = "/ws", **kwargs: Any) -> Any:
    """A real `websockets` client connection to a server started by `serve`."""
    from websockets.asyncio.client import connect

    return await connect(f"ws://{address}{path}", open_timeout=5, **kwargs)


async def ws_call(ws: Any, pkg_id: int, data: Any = None, req_id: str = "r1") -> Any:
    frame: dict[str, Any] = {"pkg_id": pkg_id, "req_id": req_id}
    if data is not None:
        frame["data"] = data
    await ws.send(json.dumps(frame))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


async def ws_closed(ws: Any, timeout: float = 5) -> tuple[int, str]:
    """Read until the server closes; returns the close (code, reason) the client received."""
    from websockets.exceptions import ConnectionClosed

    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason


async def ws_connect_slow(address: str, path: str = "/ws", **kwargs: Any) -> Any:
    """A client that stops reading: a small fixed receive buffer (no kernel autotuning,
    which on loopback would otherwise absorb tens of MB) and a one-frame library queue."""
    import socket

    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return await ws_connect(address, path, sock=sock, max_queue=1, **kwargs)


def server_frames(data: bytes) -> list[tuple[str, bytes]]:
    """The WebSocket frames a server wrote after its handshake response (`data` is all
    the raw bytes), as (opcode name, payload)."""
    from websockets.frames import Frame
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(bytes(data[data.find(b"\r\n\r\n") + 4 :]))
    reader.feed_eof()
    found = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            found.append((done.value.opcode.name, bytes(done.value.data)))
        except EOFError:
            return found

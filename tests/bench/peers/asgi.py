"""The bare ASGI callable: `uvicorn --factory tests.bench.peers.asgi:create_app`.

No framework at all: the ASGI messages themselves. `/echo/` answers each text frame
with the envelope tests.bench.bare answers (`orjson.loads`, `orjson.dumps`); `/ws/`
keeps the `send` of every subscriber in a set and writes each publication (a frame from
`/ws/?pub=1`), serialized once, to each of them in a loop; `GET /health` answers `ok`.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.bench.fanout.apps import ASGIApp, Message, Receive, Scope, Send, with_health

ECHO_PATH = "/echo/"
FANOUT_PATH = "/ws/"


def create_app() -> ASGIApp:
    subscribers: set[Send] = set()

    def text(message: Message) -> Any:
        return orjson.loads(message.get("text") or message.get("bytes") or b"null")

    async def echo(receive: Receive, send: Send) -> None:
        while (message := await receive())["type"] == "websocket.receive":
            request = text(message)
            answer = {
                "pkg_id": request.get("pkg_id"),
                "req_id": request.get("req_id"),
                "status_code": 0,
                "data": request.get("data", {}),
            }
            await send({"type": "websocket.send", "text": orjson.dumps(answer).decode()})

    async def fanout(scope: Scope, receive: Receive, send: Send) -> None:
        if b"pub=1" not in scope["query_string"]:
            subscribers.add(send)
        try:
            while (message := await receive())["type"] == "websocket.receive":
                request = text(message)
                event = {"event": "message", "topic": request["topic"], "data": request["data"]}
                frame = {"type": "websocket.send", "text": orjson.dumps(event).decode()}
                for subscriber in list(subscribers):
                    await subscriber(frame)
        finally:
            subscribers.discard(send)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # with_health answered /health
            status, body = 404, b"not found"
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket" and scope["path"] in (ECHO_PATH, FANOUT_PATH):
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            if scope["path"] == ECHO_PATH:
                await echo(receive, send)
            else:
                await fanout(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1000})

    return with_health(app)

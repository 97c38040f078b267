"""The bare Starlette baseline: a WebSocket endpoint doing only what a Starlette user would
write (accept, `receive_text`, `orjson.loads`, answer the envelope with `orjson.dumps`).

`bare_endpoint` is the `/bench/bare` route of tests.bench.app (the echo ceiling, in the
realtime process); `create_app` serves it alone, with `/health`, as its own process (the
idle memory baseline of tests.bench.idle: nothing of realtime is imported here).
"""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PATH = "/ws"


async def bare_endpoint(websocket: WebSocket) -> None:
    """The ceiling: receive_text, orjson.loads, answer the envelope with orjson.dumps."""
    await websocket.accept()
    try:
        while True:
            request = orjson.loads(await websocket.receive_text())
            answer = {
                "pkg_id": request.get("pkg_id"),
                "req_id": request.get("req_id"),
                "status_code": 0,
                "data": request.get("data", {}),
            }
            await websocket.send_text(orjson.dumps(answer).decode())
    except WebSocketDisconnect:
        pass


async def health(_: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    """`uvicorn --factory tests.bench.bare:create_app`: the endpoint on `/ws`."""
    return Starlette(routes=[Route("/health", health), WebSocketRoute(PATH, bare_endpoint)])

"""The servers measured, as uvicorn factories (`uvicorn --factory MODULE:FUNCTION`).

Every one does the same job: a client subscribes to the topic `broadcast`, a publisher
sends ~100 bytes of JSON, the server writes it to every subscribed socket. Each
serializes a publication once and writes the same text to every subscriber.

- `realtime_app`: the full realtime app (authenticated sockets, permissions, schema
  validation, `topics.publish` → bus → hub → each socket's bounded writer). Configured by
  `BENCH_FANOUT_DIR` (its own SQLite file), `BENCH_FANOUT_KEY` (the dev key, shared by
  two nodes), optionally `BENCH_FANOUT_REDIS_URL` (the Redis bus instead of the
  in-process one) and `BENCH_FANOUT_PATCH` (diagnostics, see `diagnostics`). The
  environment of the developer is never read.
- `socketio_app`: python-socketio `AsyncServer` (ASGI): `subscribe` → `enter_room`,
  `publish` → `emit("message", data, room=topic)`; and an `echo` event whose handler
  returns its data (Socket.IO's acknowledgement is the answer), for tests.bench.compare.
- `channels_app`: Django Channels `AsyncWebsocketConsumer`: `group_add` on connect,
  `group_send` of the serialized frame on a publish, `self.send(text_data=...)` in the
  group handler; `InMemoryChannelLayer` with its defaults. On `/echo/` (for
  tests.bench.compare) an `AsyncJsonWebsocketConsumer` answers each JSON request
  with the envelope tests.bench.bare answers.

- `bare_app`: the ceiling, no framework on top of Starlette: a set of accepted sockets,
  and for each publication one `orjson.dumps` and a loop of `await ws.send_text(frame)`
  over them (no queue, no task per socket, no slow-consumer protection).

All are served by the same uvicorn command (tests/bench/server.py: uvloop, httptools,
`--ws auto`, one worker).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from tests.bench.common import ROOT

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOPIC = "broadcast"


def realtime_app() -> Any:
    from realtime.app import create_app, load_handlers
    from realtime.settings import Settings
    from tests.bench.fanout import diagnostics

    diagnostics.apply(os.environ.get(diagnostics.ENV, ""))

    workdir = Path(os.environ["BENCH_FANOUT_DIR"])
    values = {
        "REALTIME_DEV_KEY_FILE": os.environ["BENCH_FANOUT_KEY"],
        "REALTIME_EMBEDDED_DB": str(workdir / "db.sqlite"),
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_DEV_USERS_FILE": str(ROOT / "dev-users.toml"),
        "REALTIME_RATE_LIMIT": "1000000000",
        "REALTIME_RATE_BURST": "1000000000",
        "REALTIME_MAX_INFLIGHT": "1024",
        "REALTIME_SEND_QUEUE": "4096",
        "REALTIME_LOG_LEVEL": "warning",
    }
    if os.environ.get("BENCH_FANOUT_REDIS_URL"):
        values["REDIS_URL"] = os.environ["BENCH_FANOUT_REDIS_URL"]
    return create_app(Settings.from_mapping(values), load_handlers(("handlers",))[0])


def with_health(app: ASGIApp) -> ASGIApp:
    """`app` plus what the runner needs: a lifespan that succeeds and `GET /health`."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http" and scope["path"] == "/health":
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await app(scope, receive, send)

    return asgi


def socketio_app() -> ASGIApp:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    @sio.on("subscribe")  # type: ignore[misc]
    async def subscribe(sid: str, topic: str) -> bool:
        await sio.enter_room(sid, topic)
        return True  # the acknowledgement tells the client it is subscribed

    @sio.on("publish")  # type: ignore[misc]
    async def publish(sid: str, request: dict[str, Any]) -> None:
        await sio.emit("message", request["data"], room=request["topic"])

    @sio.on("echo")  # type: ignore[misc]
    async def echo(sid: str, data: Any) -> Any:
        return data  # sent back as the acknowledgement of the client's event

    return with_health(socketio.ASGIApp(sio))


def channels_app() -> ASGIApp:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="fan-out benchmark",
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["channels"],
            CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        )
        django.setup()
    from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class FanoutConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
        """`/ws/` subscribes to the group; `/ws/?pub=1` publishes to it."""

        async def connect(self) -> None:
            self.publisher = b"pub=1" in self.scope["query_string"]
            if not self.publisher:
                await self.channel_layer.group_add(TOPIC, self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            if not self.publisher:
                await self.channel_layer.group_discard(TOPIC, self.channel_name)

        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            request = json.loads(text_data or "{}")
            frame = json.dumps(
                {"event": "message", "topic": request["topic"], "data": request["data"]},
                separators=(",", ":"),
            )
            await self.channel_layer.group_send(
                request["topic"], {"type": "broadcast.message", "text": frame}
            )

        async def broadcast_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

    class EchoConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
        """`/echo/`: each request answered with its `pkg_id`, `req_id` and `data`."""

        async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
            await self.send_json(
                {
                    "pkg_id": content.get("pkg_id"),
                    "req_id": content.get("req_id"),
                    "status_code": 0,
                    "data": content.get("data", {}),
                }
            )

    routes = [path("ws/", FanoutConsumer.as_asgi()), path("echo/", EchoConsumer.as_asgi())]
    router = ProtocolTypeRouter({"websocket": URLRouter(routes)})
    return with_health(router)


def bare_app() -> ASGIApp:
    import orjson
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    subscribers: set[WebSocket] = set()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        publisher = websocket.query_params.get("pub") == "1"
        if not publisher:
            subscribers.add(websocket)
        try:
            while True:
                request = orjson.loads(await websocket.receive_text())
                message = {"event": "message", "topic": request["topic"], "data": request["data"]}
                frame = orjson.dumps(message).decode()
                for subscriber in list(subscribers):
                    await subscriber.send_text(frame)
        except WebSocketDisconnect:
            pass
        finally:
            subscribers.discard(websocket)

    return with_health(Starlette(routes=[WebSocketRoute("/ws/", endpoint)]))

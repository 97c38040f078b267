"""The routes of an app: the sockets, health and readiness, metrics, the catalogs and
the documents derived from it, the login; the package routes come from `realtime.rest`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from realtime import __version__
from realtime.asyncapi import document as asyncapi_document
from realtime.channels import open_channels
from realtime.db import ping
from realtime.exceptions import AuthError, InvalidData, RequestError
from realtime.openapi import SWAGGER_UI, document
from realtime.packages import Catalog
from realtime.rest import (
    error_response,
    json_body,
    json_response,
    package_routes,
    services_of,
)
from realtime.socket.connection import Connection, FrameHandler
from realtime.socket.frames import echo_frame, package_frame

# `GET /ready` answers within about this (seconds), whatever its dependencies do
READY_TIMEOUT = 1.0


def routes(catalog: Catalog, on_frame: FrameHandler | None = None) -> list[BaseRoute]:
    """`on_frame` replaces what a `/ws` frame means (the benchmarks' ablations only)."""
    frames = on_frame or package_frame
    return [
        WebSocketRoute("/ws", socket(frames, channels=True)),
        WebSocketRoute("/web", socket(frames, channels=True)),
        WebSocketRoute("/ws/echo", socket(echo_frame)),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/packages", packages_catalog),
        Route("/openapi.json", openapi_json),
        Route("/docs", docs),
        Route("/asyncapi.json", asyncapi_json),
        Route("/auth/login", login, methods=["POST"]),
        *package_routes(catalog),
    ]


def socket(
    on_frame: FrameHandler, channels: bool = False
) -> Callable[[WebSocket], Awaitable[None]]:
    """`channels`: the socket gets its server-side subscriptions once authenticated (the
    personal channel, the connect hooks': realtime.channels)."""
    on_open = open_channels if channels else None

    async def endpoint(websocket: WebSocket) -> None:
        await Connection(websocket, services_of(websocket), on_frame, on_open).run()

    return endpoint


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def ready(request: Request) -> Response:
    services = services_of(request)
    if services.drain_state.started:
        # a draining node must drop out of its load balancer at once, whatever its checks
        return json_response({"status": "draining", "checks": {}}, 503)
    # both at once, each within READY_TIMEOUT: a dependency that does not answer in time
    # is not ready (a probe must not hang on it)
    database, bus = await asyncio.gather(
        ping(services.database, READY_TIMEOUT), _within(services.hub.ready(), READY_TIMEOUT)
    )
    checks = {"database": database, "bus": bus}
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return json_response(body, 200 if ok else 503, None if ok else {"Retry-After": "2"})


async def _within(check: Awaitable[bool], limit: float) -> bool:
    try:
        async with asyncio.timeout(limit):
            return await check
    except TimeoutError:
        return False


async def metrics(request: Request) -> Response:
    body = services_of(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def packages_catalog(request: Request) -> Response:
    services = services_of(request)
    dispatcher = services.dispatcher
    return json_response(
        [
            {
                "pkg_id": p.id,
                "name": p.name,
                "roles": sorted(dispatcher.roles(p)),
                "paginated": p.paginated,
                "rest": {"method": p.rest.method, "path": p.rest.path} if p.rest else None,
                "request_schema": p.request_schema(),
                "response_schema": p.response_schema,
                "description": p.description,
            }
            for p in services.catalog
        ]
    )


async def openapi_json(request: Request) -> Response:
    services = services_of(request)
    return json_response(document(services.catalog, services.dispatcher, __version__))


async def asyncapi_json(request: Request) -> Response:
    services = services_of(request)
    document = asyncapi_document(
        services.catalog, services.dispatcher, services.topics, __version__
    )
    return json_response(document)


async def docs(request: Request) -> Response:
    return HTMLResponse(SWAGGER_UI)


async def login(request: Request) -> Response:
    services = services_of(request)
    try:
        # no token is needed here: the body is bounded and parsed as the REST mount's are
        body = await json_body(request, services.settings.max_body_bytes)
    except RequestError as error:
        return error_response(error)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return error_response(InvalidData("username and password are required strings"))
    try:
        return json_response(await services.login.login(username, password))
    except (AuthError, RequestError) as error:
        return error_response(error)

"""The app factory: settings, packages and permissions in; a Starlette app out.

    uvicorn --factory realtime.app:create_app

Configuration is checked here (duplicate packages, permission entries naming nothing,
invalid schemas) so a bad declaration stops start-up; I/O resources are opened in the
lifespan and closed in its `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from realtime import __version__
from realtime.asyncapi import document as asyncapi_document
from realtime.builtin import BUILTIN_PACKAGES
from realtime.db import ping
from realtime.dispatch import Dispatcher
from realtime.exceptions import AuthError, ConfigError, InvalidData, RequestError
from realtime.guard import GUARD_STATE, Guard, connection_limit
from realtime.jobs import Task
from realtime.lifespan import build_services
from realtime.logs import install_redaction
from realtime.metrics import Metrics
from realtime.openapi import SWAGGER_UI, document
from realtime.packages import Catalog, Package
from realtime.permissions import Permissions
from realtime.ratelimit import MemoryRateLimiter
from realtime.rest import (
    error_response,
    json_response,
    package_routes,
    services_of,
    unauthorized,
)
from realtime.settings import Settings
from realtime.socket.connection import (
    ASGIChannels,
    Connection,
    FrameHandler,
    echo_frame,
    package_frame,
)
from realtime.topics import TopicPermissions
from realtime.web import cors
from realtime.web import routes as web_routes

# `GET /ready` answers within about this (seconds), whatever its dependencies do
READY_TIMEOUT = 1.0


def load_handlers(modules: Sequence[str]) -> tuple[list[Package], list[Task]]:
    """Import each module named in REALTIME_HANDLERS; collect its PACKAGES and TASKS."""
    packages: list[Package] = []
    tasks: list[Task] = []
    for module in _modules(modules):
        packages.extend(getattr(module, "PACKAGES", []))
        tasks.extend(getattr(module, "TASKS", []))
    return packages, tasks


def load_routes(modules: Sequence[str]) -> list[BaseRoute]:
    """Extra routes of handler modules (ROUTES), e.g. compatibility sockets."""
    return [route for module in _modules(modules) for route in getattr(module, "ROUTES", [])]


def _modules(modules: Sequence[str]) -> list[Any]:
    found = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"REALTIME_HANDLERS: cannot import {name!r}: {error}") from None
        found.append(module)
    return found


def create_app(
    settings: Settings | None = None,
    packages: Sequence[Package] | None = None,
    tasks: Sequence[Task] | None = None,
) -> Starlette:
    settings = settings or Settings.from_env()
    if packages is None or tasks is None:
        found_packages, found_tasks = load_handlers(settings.handlers)
        packages = found_packages if packages is None else packages
        tasks = found_tasks if tasks is None else tasks
    catalog = Catalog([*BUILTIN_PACKAGES, *packages])
    extra_routes = load_routes(settings.handlers)
    permissions = Permissions.load(settings.permissions_file)
    route_keys = [getattr(r, "permission_key", None) for r in extra_routes]
    permissions.check(catalog.by_name, [key for key in route_keys if key])
    limiter = MemoryRateLimiter(settings.rate_limit, settings.rate_burst)
    dispatcher = Dispatcher(catalog, permissions, limiter, Metrics(), settings.handler_timeout)
    topics = TopicPermissions(permissions.topics)
    install_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with build_services(settings, dispatcher, topics, tasks) as services:
            app.state.services = services
            with _frozen_startup():
                # the lifespan state reaches the server's protocols too (realtime.guard)
                yield {GUARD_STATE: _guard(settings, services.metrics)}

    routes = [*_routes(catalog), *web_routes(), *extra_routes]
    middleware = [*cors(settings.allowed_origins), Middleware(ASGIChannels)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def _guard(settings: Settings, metrics: Metrics) -> Guard:
    limit = connection_limit(settings.max_connections)
    return Guard(settings.header_timeout, limit, metrics)


@contextlib.contextmanager
def _frozen_startup() -> Iterator[None]:
    """Keep what imports and start-up created (~150k objects, none of it garbage that
    matters) out of the garbage collector while serving: a full collection scanned them
    all, a 30-60 ms pause of every socket on this node that made the cross-node latency
    tail. Given back to the collector at shutdown (a test process starts many apps; with
    two apps in one process, the first to stop unfreezes both: that costs only this
    speed-up)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _routes(catalog: Catalog) -> list[BaseRoute]:
    return [
        WebSocketRoute("/ws", _socket(package_frame)),
        WebSocketRoute("/web", _socket(package_frame)),
        WebSocketRoute("/ws/echo", _socket(echo_frame)),
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


def _socket(on_frame: FrameHandler):  # type: ignore[no-untyped-def]
    async def endpoint(websocket: WebSocket) -> None:
        await Connection(websocket, services_of(websocket), on_frame).run()

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
    from realtime.rest import json_body

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
    except AuthError as error:
        return unauthorized(error)
    except RequestError as error:
        return error_response(error)

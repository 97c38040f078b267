"""The app factory: settings, packages and permissions in; a Starlette app out.

    uvicorn --factory realtime.app:create_app

Configuration is checked here (duplicate packages, permission entries naming nothing,
invalid schemas) so a bad declaration stops start-up; I/O resources are opened in the
lifespan and closed in its `finally`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import pkgutil
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, WebSocketRoute
from taskiq import AsyncBroker

from realtime.audit import AuditStore
from realtime.builtin import catalog as builtin_catalog
from realtime.bus import Backend
from realtime.dispatch import Dispatcher
from realtime.endpoints import routes as app_routes
from realtime.exceptions import ConfigError
from realtime.guard import GUARD_STATE, Guard, connection_limit
from realtime.jobs import Task
from realtime.lifespan import build_services
from realtime.logs import install_redaction
from realtime.metrics import Metrics
from realtime.packages import Package
from realtime.permissions import Permissions
from realtime.ratelimit import MemoryRateLimiter, SharedRateLimiter
from realtime.settings import Settings
from realtime.socket.connection import ASGIChannels, FrameHandler
from realtime.topics import ConnectHook, Topic, TopicPermissions
from realtime.web import cors
from realtime.web import routes as web_routes


def load_handlers(modules: Sequence[str]) -> tuple[list[Package], list[Task]]:
    """The PACKAGES and TASKS of each module REALTIME_HANDLERS names (and of its
    submodules, see `_modules`)."""
    packages: list[Package] = []
    tasks: list[Task] = []
    for module in _modules(modules):
        packages.extend(getattr(module, "PACKAGES", []))
        tasks.extend(getattr(module, "TASKS", []))
    return packages, tasks


def load_routes(modules: Sequence[str]) -> list[BaseRoute]:
    """Extra routes of handler modules (ROUTES), e.g. compatibility sockets."""
    return [route for module in _modules(modules) for route in getattr(module, "ROUTES", [])]


def load_topics(modules: Sequence[str]) -> list[Topic]:
    """The topic authorizers of handler modules (TOPICS), next to their packages."""
    return [topic for module in _modules(modules) for topic in getattr(module, "TOPICS", [])]


def load_audit(modules: Sequence[str]) -> AuditStore | None:
    """The audit log's store (AUDIT) a handler module declares; two stop start-up."""
    stores = [module.AUDIT for module in _modules(modules) if hasattr(module, "AUDIT")]
    if len(stores) > 1:
        raise ConfigError("REALTIME_HANDLERS: more than one module declares AUDIT")
    return stores[0] if stores else None


def _check_audit(packages: Sequence[Package], store: AuditStore | None) -> None:
    audited = [package.name for package in packages if package.audited]
    if audited and store is None:
        raise ConfigError(
            f"package {audited[0]} is audited=True, but no module of REALTIME_HANDLERS "
            "declares AUDIT (the audit log's store)"
        )


def load_connect_hooks(modules: Sequence[str]) -> list[ConnectHook]:
    """What handler modules subscribe every socket to at connect (CONNECT)."""
    return [hook for module in _modules(modules) for hook in getattr(module, "CONNECT", [])]


def _modules(modules: Sequence[str]) -> list[Any]:
    """Each named module; for a package that declares no PACKAGES itself, its submodules
    instead (not those named `_*`), in name order: a handler module dropped into
    `handlers/` is served without a list to forget to edit."""
    found: list[Any] = []
    for name in modules:
        module = _import(name, name)
        if hasattr(module, "__path__") and not hasattr(module, "PACKAGES"):
            found.extend(_import(sub, name) for sub in _submodules(module))
        else:
            found.append(module)
    return found


def _submodules(package: Any) -> list[str]:
    infos = pkgutil.iter_modules(package.__path__)
    names = sorted(info.name for info in infos if not info.name.startswith("_"))
    return [f"{package.__name__}.{name}" for name in names]


def _import(name: str, named: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(f"REALTIME_HANDLERS: cannot import {named!r}: {error}") from None


def create_app(
    settings: Settings | None = None,
    packages: Sequence[Package] | None = None,
    tasks: Sequence[Task] | None = None,
    *,
    bus: Backend | None = None,
    broker: AsyncBroker | None = None,
    on_frame: FrameHandler | None = None,
) -> Starlette:
    """`bus` and `broker` replace the backends the settings' URLs name (the app starts
    and closes them as its own); `on_frame` replaces what a `/ws` frame means (the
    benchmarks' ablations use it, nothing else should)."""
    settings = settings or Settings.from_env()
    if packages is None or tasks is None:
        found_packages, found_tasks = load_handlers(settings.handlers)
        packages = found_packages if packages is None else packages
        tasks = found_tasks if tasks is None else tasks
    catalog = builtin_catalog(packages)
    extra_routes = load_routes(settings.handlers)
    permissions = Permissions.load(settings.permissions_file)
    route_keys = [getattr(r, "permission_key", None) for r in extra_routes]
    permissions.check(catalog.by_name, [key for key in route_keys if key])
    # with REDIS_URL one budget per caller for the fleet and both doors (the lifespan
    # attaches it to Redis); in process on the embedded default
    shared = settings.redis_url is not None
    limiter = (SharedRateLimiter if shared else MemoryRateLimiter)(
        settings.rate_limit, settings.rate_burst
    )
    dispatcher = Dispatcher(
        catalog, permissions, limiter, Metrics(), settings.handler_timeout, settings.handler_threads
    )
    hooks = load_connect_hooks(settings.handlers)
    topics = TopicPermissions(permissions.topics, load_topics(settings.handlers), hooks)
    audit_store = load_audit(settings.handlers)
    _check_audit(packages, audit_store)
    install_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        try:
            async with build_services(
                settings, dispatcher, topics, tasks, bus=bus, broker=broker, audit_store=audit_store
            ) as services:
                app.state.services = services
                with _tuned_collector(settings):
                    # the lifespan state reaches the server's protocols too (realtime.guard)
                    yield {GUARD_STATE: _guard(settings, services.metrics)}
        finally:
            dispatcher.close()  # the handler threads' pool

    own = app_routes(catalog, on_frame)
    sockets = [route for route in own if isinstance(route, WebSocketRoute)]
    routes = [*own, *web_routes(), *extra_routes]
    middleware = [*cors(settings.allowed_origins), Middleware(ASGIChannels, sockets=sockets)]
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def _guard(settings: Settings, metrics: Metrics) -> Guard:
    limit = connection_limit(settings.max_connections)
    return Guard(settings.header_timeout, limit, metrics)


# young collections every 10,000 net allocations of tracked objects instead of Python's 700
GC_THRESHOLDS = (10_000, 10, 10)


@contextlib.contextmanager
def _tuned_collector(settings: Settings) -> Iterator[None]:
    """While the app serves (REALTIME_GC_TUNING, on by default):

    - what imports and start-up created (~150k objects, none of it garbage that matters)
      is kept out of the garbage collector: a full collection scanned them all, a 30-60 ms
      pause of every socket on this node that made the cross-node latency tail;
    - young collections are rarer: a socket is some hundreds of tracked objects, and at
      the default threshold a crowd arriving triggered a young collection every few
      sockets and a full one (~0.4 s with 5,000 sockets open) every few hundred; a
      5,000-socket reconnect storm spent half its time collecting (docs/benchmarks.md,
      Reconnect storm).

    Undone at shutdown (a test process starts many apps; with two apps in one process,
    the first to stop undoes both: that costs only this speed-up)."""
    if not settings.gc_tuning:
        yield
        return
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()

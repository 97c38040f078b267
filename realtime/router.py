"""The package router: permission, rate limit, validation, handler with a deadline.

The socket and the REST mount both call `Router.call`, so the two doors cannot drift
apart in validation, permissions, limits or metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from realtime.db import translate
from realtime.exceptions import (
    HandlerTimeout,
    PermissionDenied,
    RequestError,
    ServerError,
    Unavailable,
)
from realtime.metrics import Metrics
from realtime.packages import Catalog, Context, Package, Page
from realtime.permissions import Permissions, allows
from realtime.protocol import Status
from realtime.ratelimit import MemoryRateLimiter
from realtime.types import JSONObject, Roles
from realtime.validation import Validator

logger = logging.getLogger("realtime.router")


class Router:
    def __init__(
        self,
        catalog: Catalog,
        permissions: Permissions,
        limiter: MemoryRateLimiter,
        metrics: Metrics,
        handler_timeout: float,
    ) -> None:
        self.catalog = catalog
        self._limiter = limiter
        self.metrics = metrics
        self._timeout = handler_timeout
        self._validators = {p.id: Validator(p.request_schema(), p.name) for p in catalog}
        self._roles: dict[int, Roles] = {p.id: permissions.package_roles(p.name) for p in catalog}

    def roles(self, package: Package) -> Roles:
        return self._roles[package.id]

    async def call(
        self, ctx: Context, data: JSONObject, transport: str
    ) -> tuple[Any, JSONObject | None]:
        """Run one request; returns (data, meta) or raises a RequestError."""
        started = time.perf_counter()
        outcome = Status.OK.name
        try:
            return await self._call(ctx, data)
        except RequestError as error:
            outcome = error.status.name
            raise
        except asyncio.CancelledError:
            outcome = "CANCELLED"  # the socket went away mid-request
            raise
        except Exception as error:
            translated = translate(error) or ServerError()
            outcome = translated.status.name
            log = logger.warning if isinstance(translated, Unavailable) else logger.error
            log("package %s failed (req_id %s)", ctx.package.name, ctx.req_id, exc_info=error)
            raise translated from None
        finally:
            name = ctx.package.name
            self.metrics.requests.labels(name, outcome, transport).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)

    async def _call(self, ctx: Context, data: JSONObject) -> tuple[Any, JSONObject | None]:
        package = ctx.package
        if not allows(self._roles[package.id], ctx.principal.roles):
            raise PermissionDenied(f"your roles do not allow {package.name}")
        self._limiter.check(ctx.principal.sub)
        data = self._validators[package.id](data)
        deadline = asyncio.timeout(package.timeout or self._timeout)
        try:
            async with deadline:
                result = await package.handler(ctx, data)
        except TimeoutError:
            if deadline.expired():
                raise HandlerTimeout() from None
            raise
        if package.paginated:
            return _paginate(package, result, data)
        return result, None


def _paginate(package: Package, result: Any, data: JSONObject) -> tuple[Any, JSONObject]:
    if not isinstance(result, Page):
        raise TypeError(f"paginated package {package.name} must return a Page")
    per_page = data["per_page"]
    meta = {
        "page": data["page"],
        "per_page": per_page,
        "total": result.total,
        "pages": math.ceil(result.total / per_page),
    }
    return result.items, meta

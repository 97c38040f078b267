"""The package router: permission, rate limit, validation, handler with a deadline.

The socket and the REST mount both call `Dispatcher.call`, so the two doors cannot drift
apart in validation, permissions, limits or metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, cast

from realtime.db import translate
from realtime.exceptions import (
    HandlerTimeout,
    PermissionDenied,
    RateLimited,
    RequestError,
    ServerError,
    Unavailable,
)
from realtime.metrics import Metrics
from realtime.packages import Catalog, Context, Package, Page
from realtime.permissions import Permissions, allows
from realtime.ratelimit import LEASE_SECONDS, LeaseNeeded, MemoryRateLimiter, SharedRateLimiter
from realtime.types import JSONObject, Roles
from realtime.validation import Validator

if TYPE_CHECKING:
    from realtime.services import Framework

logger = logging.getLogger("realtime.dispatch")

PERMITTED_CACHE = 1024
TRANSPORTS = ("ws", "rest")
# an inline=True handler should take microseconds; over this it stalled every socket of
# the node for that long, which is logged (at most every OVERRUN_LOG_EVERY s) and counted
LEASE_TRIES = 3
INLINE_BUDGET = 0.010
OVERRUN_LOG_EVERY = 60.0


class Dispatcher:
    def __init__(
        self,
        catalog: Catalog,
        permissions: Permissions,
        limiter: MemoryRateLimiter | SharedRateLimiter,
        metrics: Metrics,
        handler_timeout: float,
        handler_threads: int = 16,
    ) -> None:
        self.catalog = catalog
        self._limiter = limiter
        # packages with a rate of their own: a limiter each, of the global one's kind
        self._package_limits = {
            p.id: limiter.like(p.rate[0], p.rate[1], p.name) for p in catalog if p.rate
        }
        self.metrics = metrics
        # the OK counters by transport and package id, looked up once (hot path)
        self._ok = {
            transport: {p.id: metrics.requests.tally(p.name, "OK", transport) for p in catalog}
            for transport in TRANSPORTS
        }
        self._ok_ws = self._ok["ws"]
        self._timeout = handler_timeout
        self._checks = {p.id: _check(p) for p in catalog}
        self._roles: dict[int, Roles] = {p.id: permissions.package_roles(p.name) for p in catalog}
        # inline=True handlers run on the socket's reader; the rest are awaited, plain
        # `def` ones in a worker thread (`_in_thread`)
        self.inline = frozenset(p.id for p in catalog if p.inline)
        self._handlers = {
            p.id: _in_thread(p, self.executor) if p.runs == "thread" else p.handler for p in catalog
        }
        self._threads = handler_threads
        self._executor: ThreadPoolExecutor | None = None
        self._overrun_logged: dict[int, float] = {}
        # packages declared audited=True: each answered call goes to the audit log
        self.audited = frozenset(p.id for p in catalog if p.audited)
        # roles -> the package ids they may call: a token's roles are fixed, so the check
        # is one set lookup per request (bounded: a handful of role sets in practice)
        self._permitted: dict[Roles, frozenset[int]] = {}
        self.route_roles: dict[str, Roles] = dict(permissions.routes)
        self.grants: dict[str, Roles] = dict(permissions.grants)

    def executor(self) -> ThreadPoolExecutor:
        """The threads of plain `def` handlers: a pool of their own, so handlers running
        past their deadline (a thread cannot be stopped) hold at most these, never the
        loop's default executor that DNS lookups and the like need."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, "realtime-handler")
        return self._executor

    def close(self) -> None:
        """At the lifespan's end: queued handler calls are dropped, running ones finish
        on their own (their answers have nowhere to go)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def permitted(self, roles: Roles) -> frozenset[int]:
        """The ids of the packages `roles` may call."""
        found = self._permitted.get(roles)
        if found is None:
            if len(self._permitted) >= PERMITTED_CACHE:
                self._permitted.clear()
            found = frozenset(pid for pid, allowed in self._roles.items() if allows(allowed, roles))
            self._permitted[roles] = found
        return found

    def granted(self, grant: str, roles: Roles) -> bool:
        """Whether `roles` hold the named grant of permissions.toml's [grants]."""
        return allows(self.grants.get(grant, frozenset()), roles)

    def roles(self, package: Package) -> Roles:
        return self._roles[package.id]

    # -- HOT PATH ------------------------------------------------------------------------
    # `call` (both doors, every handler not inline=True) and `call_inline` (an inline=True
    # handler on the socket, no await) are two copies of one sequence on purpose: the
    # inline one saves an event-loop round trip per request. tests/test_dispatch.py checks
    # that both give the same answers and the same metrics; change them together.

    async def call(
        self, ctx: Context, data: JSONObject, transport: str
    ) -> tuple[Any, JSONObject | None]:
        """Run one request; returns (data, meta) or raises a RequestError."""
        started = perf_counter()
        try:
            try:
                data = self._admit(ctx, data, started)
            except LeaseNeeded as needed:  # the shared limiter's lease is spent: fetch one
                data = await self._admit_leased(ctx, data, needed)
            if ctx.package.id in self.inline:
                result = ctx.package.handler(ctx, data)
                self._clock_inline(ctx.package, started)
            else:
                result = await self._run(ctx, data)
            answer = _shape(ctx.package, result, data)
        except asyncio.CancelledError:
            self._record(ctx, "CANCELLED", transport, started, data)  # the socket went away
            raise
        except Exception as error:
            failure = self._failure(ctx, error)
            self._record(ctx, failure.status.name, transport, started, data)
            raise failure from None
        self._ok[transport][ctx.package.id].add(perf_counter() - started)
        if ctx.package.id in self.audited:
            self._audit(ctx, transport, "OK", answer[0], data)
        return answer

    def call_inline(self, ctx: Context, data: JSONObject) -> tuple[Any, JSONObject | None]:
        """`call` for an inline=True handler on the socket, without an event-loop round
        trip (REST calls `call`, which runs such handlers inline too)."""
        started = perf_counter()
        package = ctx.package
        try:
            data = self._admit(ctx, data, started)
            result = package.handler(ctx, data)
            answer = _paginate(package, result, data) if package.paginated else (result, None)
        except LeaseNeeded:
            raise  # the socket runs it as a task instead, which awaits the lease (`call`)
        except Exception as error:
            failure = self._failure(ctx, error)
            self._record(ctx, failure.status.name, "ws", started, data)
            raise failure from None
        elapsed = perf_counter() - started
        self._ok_ws[package.id].add(elapsed)
        if elapsed > INLINE_BUDGET:
            self._overran(package, elapsed)
        if package.id in self.audited:
            self._audit(ctx, "ws", "OK", answer[0], data)
        return answer

    # -- END HOT PATH --------------------------------------------------------------------

    def _admit(self, ctx: Context, data: JSONObject, now: float) -> JSONObject:
        package = ctx.package
        principal = ctx.principal
        permitted = self._permitted.get(principal.roles)  # permitted() inlined: hot path
        if permitted is None:
            permitted = self.permitted(principal.roles)
        if package.id not in permitted:
            raise PermissionDenied(f"your roles do not allow {package.name}")
        self._limiter.check(principal.sub, now)  # the same perf_counter clock
        limit = self._package_limits.get(package.id)  # _admit_package inlined: hot path
        if limit is not None:
            limit.check(principal.sub, now)
        check = self._checks[package.id]
        return data if check is None else check(data)

    def _admit_package(self, ctx: Context, data: JSONObject, now: float) -> JSONObject:
        limit = self._package_limits.get(ctx.package.id)
        if limit is not None:
            limit.check(ctx.principal.sub, now)
        check = self._checks[ctx.package.id]
        return data if check is None else check(data)

    async def _admit_leased(
        self, ctx: Context, data: JSONObject, needed: LeaseNeeded
    ) -> JSONObject:
        """`_admit` once the limiter that ran dry has a lease again (one Redis call). The
        global limit is spent before the package's, so a package's lease resumes there.
        Concurrent requests may spend a fresh lease first: a few tries, then RATE_LIMITED."""
        for _ in range(LEASE_TRIES):
            await needed.limiter.lease(ctx.principal.sub)
            try:
                if needed.limiter is self._limiter:
                    return self._admit(ctx, data, perf_counter())
                return self._admit_package(ctx, data, perf_counter())
            except LeaseNeeded as again:
                needed = again
        raise RateLimited(LEASE_SECONDS)

    def share_limits(self, redis: Any, timeout: float) -> None:
        """With REDIS_URL (the lifespan): every limit kept in Redis, for the fleet."""
        for limiter in (self._limiter, *self._package_limits.values()):
            if isinstance(limiter, SharedRateLimiter):
                limiter.attach(redis, timeout, self.metrics.limiter_fallbacks.inc)

    def unshare_limits(self) -> None:
        for limiter in (self._limiter, *self._package_limits.values()):
            if isinstance(limiter, SharedRateLimiter):
                limiter.detach()

    async def _run(self, ctx: Context, data: JSONObject) -> Any:
        """The handler under its deadline: one timer that cancels this task when it fires
        (lighter than asyncio.timeout on this hot path)."""
        task = asyncio.current_task()
        assert task is not None
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(ctx.package.timeout or self._timeout, expire)
        try:
            return await self._handlers[ctx.package.id](ctx, data)
        except asyncio.CancelledError:
            if not fired:
                raise
            task.uncancel()
            raise HandlerTimeout() from None
        finally:
            timer.cancel()

    def _clock_inline(self, package: Package, started: float) -> None:
        elapsed = perf_counter() - started
        if elapsed > INLINE_BUDGET:
            self._overran(package, elapsed)

    def _overran(self, package: Package, elapsed: float) -> None:
        """An inline handler held the event loop (every socket of the node) too long:
        counted always, logged at most once a minute per package."""
        self.metrics.inline_overruns.labels(package.name).inc()
        now = monotonic()
        if now - self._overrun_logged.get(package.id, -OVERRUN_LOG_EVERY) >= OVERRUN_LOG_EVERY:
            self._overrun_logged[package.id] = now
            logger.warning(
                "package %s is inline=True but held the event loop %.1f ms (budget %.0f ms): "
                "declare it without inline=True to run it in a thread",
                package.name,
                elapsed * 1000,
                INLINE_BUDGET * 1000,
            )

    def _failure(self, ctx: Context, error: Exception) -> RequestError:
        """The answer to a handler's exception: ours as it is; a driver error as
        `translate` maps it (its class's codes are the table's); anything else ERROR."""
        if isinstance(error, RequestError):
            return error
        failure = translate(error)
        fields = {"req_id": ctx.req_id, "sub": ctx.principal.sub, "package": ctx.package.name}
        if failure is None:
            logger.error(
                "package %s failed (req_id %s)",
                ctx.package.name,
                ctx.req_id,
                exc_info=error,
                extra={**fields, "status": "ERROR"},
            )
            return ServerError()
        # a driver error the client caused (CONFLICT, INVALID_DATA) or an outage: no trace
        log = logger.warning if isinstance(failure, Unavailable) else logger.info
        log(
            "package %s: %s (req_id %s): %s",
            ctx.package.name,
            failure.status.name,
            ctx.req_id,
            type(error).__name__,
            extra={**fields, "status": failure.status.name},
        )
        return failure

    def _record(
        self, ctx: Context, outcome: str, transport: str, started: float, data: JSONObject
    ) -> None:
        elapsed = perf_counter() - started
        self.metrics.requests.record(ctx.package.name, outcome, transport, elapsed)
        # RATE_LIMITED calls are not audited: they changed nothing, and a flood of them
        # would crowd the other callers' rows out of the bounded queue (they are counted)
        if ctx.package.id in self.audited and outcome != "RATE_LIMITED":
            self._audit(ctx, transport, outcome, None, data)

    def _audit(self, ctx: Context, transport: str, outcome: str, answer: Any, data: Any) -> None:
        """Queue the call's audit row (no await: realtime.audit writes it later)."""
        cast("Framework", ctx.services).audit.record(ctx, transport, outcome, answer, data)


def _in_thread(
    package: Package, executor: Callable[[], ThreadPoolExecutor]
) -> Callable[[Context, JSONObject], Awaitable[Any]]:
    """A plain `def` handler awaited in a worker thread (the dispatcher's pool), so a
    slow one stalls neither its socket nor the node. At its deadline the caller gets
    TIMEOUT; the thread itself cannot be stopped and finishes unobserved."""
    handler = package.handler

    async def run(ctx: Context, data: JSONObject) -> Any:
        call = functools.partial(contextvars.copy_context().run, handler, ctx, data)
        return await asyncio.get_running_loop().run_in_executor(executor(), call)

    return run


def not_json(package: Package, req_id: str | None) -> ServerError:
    """The answer when a handler's result cannot be encoded (orjson's TypeError): a bug
    of the handler, logged here once with its traceback. Call it from the `except`
    clause, on the socket (`req_id`) and over REST (None) alike."""
    logger.exception("package %s answered data that is not JSON (req_id %s)", package.name, req_id)
    return ServerError()


def _check(package: Package) -> Validator | None:
    """The package's validator; None where its schema accepts every object, so the hot
    path makes no call at all."""
    validator = Validator(package.request_schema(), package.name)
    return None if validator.trivial else validator


def _shape(package: Package, result: Any, data: JSONObject) -> tuple[Any, JSONObject | None]:
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

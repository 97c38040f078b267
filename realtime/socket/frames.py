"""What a frame means on a socket: package requests (`/ws`), echo, or nothing.

`Requests` is the package session of one socket: it parses, looks up, spawns the handler
(inline for an inline=True one, a task otherwise, within the in-flight cap), answers, and
counts what closes a misbehaving client (invalid frames: 1008; a client that keeps going
after RATE_LIMITED: 4429). The connection only moves frames.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from realtime.dispatch import not_json
from realtime.exceptions import (
    InvalidData,
    PolicyViolation,
    RateLimited,
    RequestError,
    SustainedRateLimit,
    UnknownPackage,
)
from realtime.packages import Context, Package
from realtime.protocol import EnvelopeError, encode_error, encode_ok, parse_request
from realtime.ratelimit import LeaseNeeded
from realtime.types import JSONObject

if TYPE_CHECKING:
    from realtime.socket.connection import Connection


class Requests:
    """The package requests of one socket."""

    def __init__(self, connection: Connection) -> None:
        services = connection.services
        self.connection = connection
        self.packages = services.catalog.by_id
        self._services = services
        self._dispatcher = services.dispatcher
        self._inline = services.dispatcher.inline
        self._max_inflight = services.settings.max_inflight
        self._max_invalid = services.settings.max_invalid_frames
        self._max_rate_limited = services.settings.max_rate_limited
        self._put = connection.outbox.put
        self.tasks: set[asyncio.Task[None]] = set()
        self._invalid_frames = 0
        # the current streak of RATE_LIMITED answers (see _rate_limited)
        self._limited_since = self._limited_last = -math.inf
        self._limited_wait = 0.0
        self._violations = 0

    def unlink(self) -> None:
        """The socket has ended and its requests with it: drop the tasks' set (done
        tasks hold their frames, which hold the connection) and the connection itself."""
        self.tasks.clear()
        del self.connection  # nothing is served any more: a use now is a bug, and fails

    # -- HOT PATH ----------------------------------------------------------------------
    # `spawn` (an inline=True handler, inline) and `_handle` (any other, in a task)
    # are two copies of one sequence on purpose: the inline one saves a task and an await
    # per request, which the echo benchmark shows. tests/test_dispatch.py checks that both
    # give the same answers and the same metrics.

    def spawn(self, package: Package, req_id: str, data: JSONObject) -> None:
        """Run one request. An inline=True handler runs here: no task, no await,
        as few calls as can be. Others run concurrently, within the socket's cap."""
        self._invalid_frames = 0
        if package.id not in self._inline:
            self._start(package, req_id, data)
            return
        connection = self.connection
        assert connection.principal is not None  # only an authenticated socket gets here
        ctx = Context(connection.principal, package, self._services, req_id, connection)
        try:
            result, meta = self._dispatcher.call_inline(ctx, data)
            message = encode_ok(package.id, req_id, result, meta)
        except RequestError as error:
            self._failed(ctx, error)
            return
        except LeaseNeeded:  # the shared rate limit needs a Redis call: not inline, then
            self._start(package, req_id, data)
            return
        except TypeError:  # orjson.JSONEncodeError: the handler returned something not JSON
            self._failed(ctx, not_json(package, req_id))
            return
        self._answer(ctx, message)

    async def _handle(self, package: Package, req_id: str, data: JSONObject) -> None:
        connection = self.connection
        assert connection.principal is not None
        ctx = Context(connection.principal, package, self._services, req_id, connection)
        try:
            result, meta = await self._dispatcher.call(ctx, data, "ws")
            message = encode_ok(package.id, req_id, result, meta)
        except RequestError as error:
            self._failed(ctx, error)
            return
        except TypeError:
            self._failed(ctx, not_json(package, req_id))
            return
        except BaseException:
            ctx.abandon()  # cancelled (the socket went away): what it subscribed to goes too
            raise
        self._answer(ctx, message)

    # -- END HOT PATH ------------------------------------------------------------------

    def _start(self, package: Package, req_id: str, data: JSONObject) -> None:
        if len(self.tasks) >= self._max_inflight:
            self.answer_error(package.id, req_id, RateLimited(1, "too many requests in flight"))
            return
        task = asyncio.create_task(self._handle(package, req_id, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _answer(self, ctx: Context, message: bytes) -> None:
        # the outbox itself, not connection.enqueue: one call less on every answer
        slow = self._put(message, False)
        if slow is not None:
            self.connection.close(slow)
        if ctx.live is not None:  # checked here, not in a call: most requests subscribe nothing
            ctx.answered()  # what it subscribed to: history, then live, right after the answer

    def _failed(self, ctx: Context, error: RequestError) -> None:
        ctx.abandon()  # a handler that failed after subscribing keeps no subscription
        assert ctx.package is not None
        self.answer_error(ctx.package.id, ctx.req_id, error)

    def answer_error(self, pkg_id: int | None, req_id: str | None, error: RequestError) -> None:
        message = encode_error(pkg_id, req_id, error.status, error.to_error())
        self.connection.enqueue(message, direct=False)
        if isinstance(error, RateLimited):
            self._rate_limited(error.retry_after)

    def _rate_limited(self, retry_after: float) -> None:
        """4429 is for a client that keeps going after it was told to wait, not for a burst
        it sent before it could read any answer. A streak of RATE_LIMITED answers starts
        with a `retry_after`; only those to requests that came once it had passed count,
        and the streak ends when nothing was RATE_LIMITED for that long (it waited)."""
        now = time.monotonic()
        if now - self._limited_last >= self._limited_wait:
            self._limited_since, self._limited_wait, self._violations = now, retry_after, 0
        elif now >= self._limited_since + self._limited_wait:
            self._violations += 1
            if self._violations >= self._max_rate_limited:
                self.connection.close(SustainedRateLimit())
        self._limited_last = now

    def invalid_frame(self, error: EnvelopeError) -> None:
        self.answer_error(error.pkg_id, error.req_id, InvalidData(error.reason))
        self._invalid_frames += 1
        if self._invalid_frames >= self._max_invalid:
            self.connection.close(PolicyViolation())


# -- frame handlers: (connection, text) -> None --------------------------------------


def package_frame(connection: Connection, text: str) -> None:
    """`/ws`: a frame is a package request (PROTOCOL.md 2)."""
    requests = connection.requests
    try:
        pkg_id, req_id, data = parse_request(text)
    except EnvelopeError as error:
        requests.invalid_frame(error)
        return
    package = requests.packages.get(pkg_id)
    if package is None:
        unknown = UnknownPackage(f"no package has pkg_id {pkg_id}")
        requests.answer_error(pkg_id, req_id, unknown)
        return
    requests.spawn(package, req_id, data)


def ignore_frame(connection: Connection, text: str) -> None:
    """Sockets that only push (compatibility streams) ignore what the client sends."""


def echo_frame(connection: Connection, text: str) -> None:
    """`/ws/echo` (compatibility): answer each text frame with `Echo: <text>`."""
    connection.enqueue(f"Echo: {text}".encode(), direct=False)

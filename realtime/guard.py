"""What a peer can hold before it has sent a whole request head, bounded under uvicorn.

uvicorn keeps a connection whose request head never completes for ever (its keep-alive
timer only runs between requests), and accepts connections until the process runs out
of descriptors, when /health and new sockets fail with nothing logged (slowloris). The
HTTP protocol given to uvicorn here adds two bounds:

- a request head (request line and headers, for HTTP and for a WebSocket upgrade alike)
  must be complete within `REALTIME_HEADER_TIMEOUT` of the connection or of the start of
  the request: else 408 and the connection is closed;
- at most `REALTIME_MAX_CONNECTIONS` connections (HTTP and WebSocket) are held: one more
  is answered 503 (`Retry-After: 1`, the protocol's UNAVAILABLE body) and closed at once.

Both are counted (`realtime_http_refused_total{reason}`) and logged, at most one line
per `LOG_EVERY` seconds, so a flood cannot flood the log too.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from realtime.protocol import Status, encode_rest_error

logger = logging.getLogger("realtime.guard")
LOG_EVERY = 10.0
LINGER = 1.0  # seconds a refused connection is kept for its answer to be read
# descriptors kept for what is not a client connection: the database pool, Redis,
# log files, the listening socket, the event loop's own
RESERVED_DESCRIPTORS = 128
GUARD_STATE = "realtime.guard"  # where the lifespan state holds the app's Guard


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


TIMED_OUT = _response(
    "408 Request Timeout",
    encode_rest_error(Status.INVALID_DATA, {"message": "the request head did not arrive in time"}),
)
OVER_LIMIT = _response(
    "503 Service Unavailable",
    encode_rest_error(
        Status.UNAVAILABLE, {"message": "too many connections", "details": {"retry_after": 1}}
    ),
    "retry-after: 1\r\n",
)


def connection_limit(configured: int) -> int:
    """The configured limit, or (0) what the process's descriptor limit leaves room for."""
    if configured:
        return configured
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - RESERVED_DESCRIPTORS)


class Guard:
    """The bounds of one app, and its count of refused connections. The lifespan puts it
    in the lifespan state, where every server process's protocols find it (uvicorn's
    worker processes import the protocol by name, so it cannot carry them itself)."""

    def __init__(self, header_timeout: float, max_connections: int, metrics: Any) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._metrics = metrics
        self._counts: dict[str, int] = {}
        self._logged = 0.0

    def refused(self, reason: str) -> None:
        """Count it; log what was refused at most once per LOG_EVERY seconds."""
        self._metrics.http_refused.labels(reason).inc()
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            summary = ", ".join(f"{n} {why}" for why, n in sorted(self._counts.items()))
            logger.warning("refused connections since the last report: %s", summary)
            self._counts.clear()
            self._logged = now


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two bounds of the app's Guard (given to
    uvicorn as `http="realtime.guard:GuardedHttpProtocol"`). Without a Guard in the
    lifespan state it is uvicorn's protocol unchanged."""

    _head_timer: Any = None

    @property
    def _guard(self) -> Guard | None:
        guard = self.app_state.get(GUARD_STATE)
        return guard if isinstance(guard, Guard) else None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        guard = self._guard
        if guard is not None and len(self.connections) > guard.max_connections:
            self._refuse(guard, OVER_LIMIT, "over the connection limit")
        else:
            self._await_head()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # the socket's protocol has the transport now and this one is done: its parser
        # holds its callbacks (bound methods of this protocol), a cycle that only a full
        # collection would free, one per socket ever opened
        del self.parser

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        guard = self._guard
        if guard is not None and self._head_timer is None:
            self._head_timer = self.loop.call_later(guard.header_timeout, self._head_late)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if (guard := self._guard) is not None:
            self._refuse(guard, TIMED_OUT, "request head timed out")

    def _refuse(self, guard: Guard, response: bytes, reason: str) -> None:
        """Answer, then end the connection. Not a plain close: what the peer sent and we
        did not read would make the kernel reset the connection, and the answer could be
        lost. So: stop reading, answer, half-close, and drop it a moment later."""
        guard.refused(reason)
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, transport.abort)

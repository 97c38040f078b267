"""One WebSocket: handshake checks, authentication and expiry, the reader.

What the socket sends goes through its `Outbox` (realtime.socket.outbox: the bounded
queue, the writer, the one 1013 decision); what a frame means is decided by a frame
handler (realtime.socket.frames: package requests, echo). On disconnect every task of
the socket (reader, writer, handlers) is cancelled and awaited, and its expiry timer
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.routing import Match, WebSocketRoute
from starlette.websockets import WebSocket

from realtime.auth.principal import Principal
from realtime.builtin import refresh_answer
from realtime.exceptions import (
    AuthError,
    BinaryFrame,
    CloseError,
    ForbiddenOrigin,
    FrameTooLarge,
    GoingAway,
    PermissionDenied,
)
from realtime.protocol import (
    AUTH_EXPIRING,
    SERVER_DRAINING,
    EnvelopeError,
    Request,
    encode_event,
    encode_ok,
    parse_request,
)
from realtime.socket.frames import Requests
from realtime.socket.outbox import Outbox

if TYPE_CHECKING:  # the composition root, for types only: importing it loads it all
    from realtime.lifespan import Services

logger = logging.getLogger("realtime.socket")

SUBPROTOCOL = "realtime.v1"
BEARER_SUBPROTOCOL = "bearer."
AUTH_REFRESH = "auth.refresh"
# frames handled in a row before the reader gives the loop a turn: a burst of 16 inline
# answers takes ~0.25 ms; yielding more often costs a loop iteration (a poll) per few frames
YIELD_EVERY = 16


class State(enum.Enum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSING = "closing"


class _Disconnected(Exception):
    """The peer went away; nothing left to answer."""


def _reset(transport: Any) -> None:
    """Drop a connection the peer has not let us close: RST (linger 0) discards what the
    kernel still holds for it, where a plain close would keep sending it for minutes."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return  # closed cleanly in time
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def presented_token(websocket: WebSocket) -> str | None:
    """The handshake token, checked in PROTOCOL.md 1.1 order: header, subprotocol, query."""
    authorization = websocket.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(BEARER_SUBPROTOCOL):
            return offered[len(BEARER_SUBPROTOCOL) :] or None
    return websocket.query_params.get("token") or None


def forget_token(scope: Any) -> None:
    """Drop the handshake's token from the scope once it is verified (the Authorization
    header, a `bearer.` subprotocol): nothing reads it again, and every idle socket kept
    its copy (~1 KiB, more for Keycloak's tokens: docs/benchmarks.md, Idle memory).
    In place: Starlette's cached `websocket.headers` is a view of the same list."""
    headers = scope.get("headers")
    if isinstance(headers, list):
        headers[:] = [
            (name, value)
            for name, value in headers
            if name != b"authorization"
            and not (name == b"sec-websocket-protocol" and BEARER_SUBPROTOCOL.encode() in value)
        ]
    offered = scope.get("subprotocols")
    if isinstance(offered, list):
        offered[:] = [name for name in offered if not name.startswith(BEARER_SUBPROTOCOL)]


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...] | None) -> bool:
    """No Origin (non-browser) passes; unset ALLOWED_ORIGINS means same-origin only."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    if allowed is None:
        return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()
    return "*" in allowed or origin.rstrip("/") in allowed


def _settle(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


FrameHandler = Callable[["Connection", str], None]

# where `ASGIChannels` leaves the server's own receive/send for the socket
ASGI_CHANNELS = "realtime.asgi_channels"


class ASGIChannels:
    """Outermost middleware: keeps the server's receive/send of each WebSocket in its scope.

    After the handshake a Connection exchanges frames through them directly. Starlette's
    WebSocket wrapper and the two send wrappers of its exception handling add ~2 us to
    every frame and do nothing for an accepted socket (the Connection tracks its own
    state and catches a dead peer's errors itself). The handshake, accept and close still
    go through Starlette's WebSocket.

    realtime's own sockets (`sockets`: the routes whose endpoint serves a Connection) are
    served from here, past Starlette's exception middleware and router: their eight
    coroutines (middleware, router, route, session wrappers) stay suspended for the
    socket's whole life, ~4 KiB of every idle socket, and do nothing for it (a
    Connection answers its own errors with close codes). Any other route is Starlette's.
    """

    def __init__(self, app: Any, sockets: Sequence[WebSocketRoute] = ()) -> None:
        self.app = app
        self._sockets = tuple(sockets)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[ASGI_CHANNELS] = (receive, send)
            for route in self._sockets:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.endpoint(WebSocket(scope, receive, send))
                    return
        await self.app(scope, receive, send)


class Connection:
    """Serves one socket. `on_frame` decides what a text frame means (packages or echo)."""

    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        on_frame: FrameHandler,
        on_open: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self.websocket = websocket
        self._on_open = on_open
        self.services = services
        self.settings = settings = services.settings
        self.principal: Principal | None = None
        self.id = secrets.token_hex(8)
        self.state = State.CONNECTING
        self._on_frame = on_frame
        channels = websocket.scope.get(ASGI_CHANNELS)
        self._receive: Callable[[], Awaitable[Any]]
        if channels is not None:
            self._receive, send = channels
        else:  # an app built without ASGIChannels (tests): Starlette's wrapper, same frames
            self._receive, send = websocket.receive, websocket.send
        self._send = send
        self.outbox = Outbox(
            send,
            websocket.close,
            limit=settings.send_queue,
            send_timeout=settings.send_timeout,
            close_timeout=settings.close_timeout,
            on_slow=self.close,
        )
        self._put = self.outbox.put
        self.requests = Requests(self)
        self._reader: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._frames = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        self.services.metrics.connections.inc()
        self.services.metrics.sockets_opened.inc()
        self.services.connections.add(self)
        writer = self.outbox.start()
        self._reader = asyncio.create_task(self._read_loop())
        self._joined_during_drain()
        try:
            await self._supervise(self._reader, writer)
        finally:
            self.services.connections.discard(self)
            self.services.sessions.release(self)
            await self._cleanup()
            self.services.metrics.connections.dec()
            self.services.metrics.traffic.ended(self)

    def _joined_during_drain(self) -> None:
        """A socket opened while the node drains is told to go elsewhere as the others
        were; once the drain window is over it is closed at once (1001)."""
        drain = self.services.drain_state
        if drain.started:
            self.draining()
        if drain.closing:
            self.close(GoingAway())

    async def _supervise(self, reader: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
        # one future the two tasks' ends complete, not asyncio.wait: its two coroutines
        # and their future stayed suspended for the socket's life (~0.7 KiB per socket)
        either: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        settle = functools.partial(_settle, either)
        reader.add_done_callback(settle)
        writer.add_done_callback(settle)
        await either
        if reader.done() and not reader.cancelled():
            error = reader.exception()
            if isinstance(error, CloseError):
                self.close(error)
            elif error is not None and not isinstance(error, _Disconnected):
                logger.error("connection failed", exc_info=error)
                self.close(CloseError())  # 1011: a bug of ours, never the peer's fault
        if self.state is State.CLOSING:
            with contextlib.suppress(TimeoutError):
                # a send already stuck may need its own timeout before the close gets its turn
                async with asyncio.timeout(
                    self.settings.send_timeout + self.settings.close_timeout + 1
                ):
                    await asyncio.shield(writer)

    async def _cleanup(self) -> None:
        self.state = State.CLOSING
        self.outbox.closed = True  # nothing may start a send any more
        self.services.hub.drop(self)
        if self._expiry is not None:
            self._expiry.cancel()
        tasks = [t for t in (self._reader, *self.outbox.tasks(), *self.requests.tasks) if t]
        for task in tasks:
            task.cancel()
        # a second cancellation while we wait must not replace the one being raised
        # (anyio only swallows its own CancelledError), so it is absorbed here
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(tasks)
        self._unlink()

    def _unlink(self) -> None:
        """The socket has ended: break its reference cycles (its ended tasks hold their
        exceptions, whose tracebacks hold the frames that hold this connection; the
        outbox holds `close`; the requests hold the connection), so that it is freed when
        its last reference goes. Left to the collector, a crowd of closed sockets was
        ~55 objects each that only a full collection frees, ~0.4 s with 5,000 sockets
        open, a stall of every one of them (docs/benchmarks.md, Reconnect storm)."""
        self._reader = None
        self.outbox.unlink()
        self.requests.unlink()
        # the server's receive and send are bound methods of its protocol, which holds
        # the scope
        self.websocket.scope.pop(ASGI_CHANNELS, None)

    def close(self, error: CloseError) -> None:
        """Close with `error.code` after what is already queued (or at once if overflowing)."""
        if self.state is State.CLOSING:
            return
        self.state = State.CLOSING
        self.services.metrics.closes.labels(str(int(error.code))).inc()
        self.outbox.close(error)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reset_later()

    def _reset_later(self) -> None:
        """The close is decided: whatever the peer does, the connection is gone within
        close_timeout. uvicorn's transport.close() waits for its write buffer to drain,
        which a peer that does not read never lets happen (its descriptor and the kernel's
        buffers stayed held, and it got stale frames later). uvicorn exposes the transport
        only on its protocol, the object whose method the server's `send` is."""
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        # duck-typed: uvloop's transports are not asyncio.Transport subclasses
        if callable(getattr(transport, "abort", None)):
            loop = asyncio.get_running_loop()
            loop.call_later(self.settings.close_timeout, _reset, transport)

    @property
    def frames_received(self) -> int:
        """Text frames handled since authentication (the metrics read it at a scrape)."""
        return self._frames

    # -- sending -----------------------------------------------------------------------

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        """Send one text frame through the outbox (see `Outbox.put`); a full queue closes
        the socket with the code the outbox answers (1013)."""
        error = self._put(message, direct, replay)
        if error is not None:
            self.close(error)

    def check_stall(self, now: float) -> None:
        """The process's send sweeper: see `Outbox.check_stall`."""
        self.outbox.check_stall(now)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        # two steps: what the handshake's frame held (the token, ~1 KiB) goes with it,
        # where this frame, suspended for the socket's life, would have kept it
        await self._open()
        await self._serve_frames()

    async def _open(self) -> None:
        if not origin_allowed(self.websocket, self.settings.allowed_origins):
            raise ForbiddenOrigin()
        self.state = State.AUTHENTICATING
        token = presented_token(self.websocket)
        if token:
            principal = await self._verify(token)
            await self._admit(principal)
        else:
            principal = await self._first_frame_auth()
        self._authenticated(principal)
        self.state = State.OPEN
        self.outbox.direct = True
        if self._on_open is not None:
            await self._on_open(self)
        forget_token(self.websocket.scope)

    async def _serve_frames(self) -> None:
        """Hand each text frame to `on_frame`, whose answers the writer writes together
        once the frames that came in together are handled."""
        yield_every = max(1, min(YIELD_EVERY, self.settings.send_queue // 2))
        receive, on_frame, limit = self._receive, self._on_frame, self.settings.max_frame_bytes
        outbox = self.outbox
        while True:
            # HOT PATH: _receive_text inlined, one coroutine less per frame; the two must
            # refuse the same frames (binary, over the limit, the peer gone)
            message = await receive()
            text = message.get("text")
            if text is None or (len(text) * 4 > limit and len(text.encode()) > limit):
                raise self._not_usable(message, limit)
            on_frame(self, text)
            if outbox.flusher is not None:
                # the transport holds a write (the peer reads slowly): read no further
                # frames until it is done, as a plain `await send` would
                await outbox.until_written()
            if self.state is State.CLOSING:
                return
            self._frames += 1
            if self._frames % yield_every == 0:
                # frames already buffered are received without suspending: yield now and
                # then, so the writer (their answers wait for it, well within the send
                # queue) and the handlers keep pace with a client pipelining hard
                await asyncio.sleep(0)

    async def _receive_text(self) -> str:
        message = await self._receive()
        text = message.get("text")
        limit = self.settings.max_frame_bytes
        if text is None or (len(text) * 4 > limit and len(text.encode()) > limit):
            raise self._not_usable(message, limit)
        return str(text)

    @staticmethod
    def _not_usable(message: Any, limit: int) -> Exception:
        """Why a received message is not a frame to handle: the peer left, a binary
        frame, or a frame over the limit."""
        if message["type"] == "websocket.disconnect":
            return _Disconnected()
        if message.get("text") is None:
            return BinaryFrame()
        return FrameTooLarge(f"frame larger than {limit} bytes")

    # -- authentication ----------------------------------------------------------------

    async def _verify(self, token: str) -> Principal:
        return await self.services.verifier.verify(token)

    async def _first_frame_auth(self) -> Principal:
        """No token at the handshake: the first frame must be auth.refresh (PROTOCOL.md 1.1)."""
        try:
            async with asyncio.timeout(self.settings.auth_timeout):
                text = await self._receive_text()
        except TimeoutError:
            raise AuthError("no token received in time") from None
        except BinaryFrame:
            raise AuthError("the first frame must be auth.refresh") from None
        request, token = self._auth_request(text)
        principal = await self._verify(token)
        await self._admit(principal)
        pkg_id, req_id, _ = request
        self.enqueue(encode_ok(pkg_id, req_id, refresh_answer(principal)))
        return principal

    def _auth_request(self, text: str) -> tuple[Request, str]:
        try:
            request = parse_request(text)
        except EnvelopeError:
            raise AuthError("the first frame must be auth.refresh") from None
        pkg_id, _, data = request
        package = self.services.catalog.by_id.get(pkg_id)
        token = data.get("token")
        if package is None or package.name != AUTH_REFRESH or not isinstance(token, str):
            raise AuthError("the first frame must be auth.refresh")
        return request, token

    async def _admit(self, principal: Principal) -> None:
        """Count the socket of its user before anything is sent on it: over the user's
        cap it is closed with 4409 (TooManySockets), having been told nothing, so a client
        reconnecting is not reset to its shortest backoff."""
        await self.services.sessions.admit(self, principal)

    def _authenticated(self, principal: Principal) -> None:
        self.principal = principal
        self._expire_at(principal.expires_at)

    # The expiry is two timer handles in turn, not a task: a task sleeping until the
    # token expires held a task, its coroutine, a future and a context copy for the
    # whole life of every socket (~1.6 KiB: docs/benchmarks.md, Idle memory).

    def _expire_at(self, expires_at: int) -> None:
        """Warn `expiry_warning` seconds before exp, close with 4401 at exp (PROTOCOL.md 1.2)."""
        if self._expiry is not None:
            self._expiry.cancel()
        warn_in = expires_at - time.time() - self.settings.expiry_warning
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(max(0.0, warn_in), self._warn_expiring, expires_at)

    def _warn_expiring(self, expires_at: int) -> None:
        remaining = max(0.0, expires_at - time.time())
        self.enqueue(encode_event(AUTH_EXPIRING, {"expires_in": round(remaining)}))
        self._expiry = asyncio.get_running_loop().call_later(remaining, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.close(AuthError("token expired"))

    async def refresh(self, token: str) -> Principal:
        """auth.refresh on an open socket: a fresh token for the same subject."""
        try:
            principal = await self._verify(token)
        except AuthError as error:
            raise PermissionDenied(f"token rejected: {error.reason}") from None
        current = self.principal
        # the same caller: the same sub in another tenant is another caller (its
        # personal channel, its sessions entry and its cap are the first one's)
        if current is not None and (principal.sub, principal.tenant_id) != (
            current.sub,
            current.tenant_id,
        ):
            raise PermissionDenied("token rejected: it belongs to another subject")
        self._authenticated(principal)
        return principal

    def draining(self) -> None:
        """The server is shutting down: reconnect elsewhere (PROTOCOL.md 2.4)."""
        self.enqueue(encode_event(SERVER_DRAINING, {}))

    async def emit(self, event: str, data: Any) -> None:
        self.enqueue(encode_event(event, data))

"""One WebSocket: handshake checks, authentication, a reader, a bounded writer, in-flight tasks.

Every send goes through the socket's bounded queue, drained by one writer task with a
timeout: a peer that stops reading fills the queue and is closed with 1013, and never
blocks the reader, other sockets or the handlers. On disconnect every task of the socket
(reader, writer, handlers, expiry timer) is cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import math
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

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
    PolicyViolation,
    RateLimited,
    RequestError,
    ServerError,
    SlowConsumer,
    SustainedRateLimit,
    UnknownPackage,
)
from realtime.lifespan import Services
from realtime.packages import Context, Package
from realtime.protocol import (
    EnvelopeError,
    Request,
    Status,
    encode_error,
    encode_event,
    encode_ok,
    parse_request,
)
from realtime.types import JSONObject

logger = logging.getLogger("realtime.socket.connection")

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


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Replay(bytes):
    """A history frame queued on subscribe: bounded by the topic's retention, so it does
    not count against the send queue (a long replay is no sign of a slow peer)."""

    __slots__ = ()


class _Disconnected(Exception):
    """The peer went away; nothing left to answer."""


async def _finish(send: Coroutine[Any, Any, None], blocked: Any) -> None:
    """Drive `send`, which already ran up to awaiting `blocked`, to its end, as a task
    would have: resume it when what it waits on is done, or throw in what that raised
    (a cancellation by the send deadline included)."""
    while True:
        try:
            if blocked is None:  # a bare yield (sleep(0)): just give the loop a turn
                await asyncio.sleep(0)
            else:
                # what a task does with a future its coroutine yielded: clear the flag the
                # future's __await__ set, then wait for it
                blocked._asyncio_future_blocking = False
                await blocked
        except BaseException as error:
            try:
                blocked = send.throw(error)
            except StopIteration:
                return
            continue
        try:
            blocked = send.send(None)
        except StopIteration:
            return


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


def origin_allowed(websocket: WebSocket, allowed: tuple[str, ...] | None) -> bool:
    """No Origin (non-browser) passes; unset ALLOWED_ORIGINS means same-origin only."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    if allowed is None:
        return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()
    return "*" in allowed or origin.rstrip("/") in allowed


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
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[ASGI_CHANNELS] = (receive, send)
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
        self.settings = services.settings
        self._dispatcher = services.dispatcher
        self.packages = services.catalog.by_id
        self._inline = services.dispatcher.inline
        self.principal: Principal | None = None
        self.id = secrets.token_hex(8)
        self.state = State.CONNECTING
        self._on_frame = on_frame
        channels = websocket.scope.get(ASGI_CHANNELS)
        self._receive: Callable[[], Awaitable[Any]]
        self._send: Callable[[Any], Coroutine[Any, Any, None]]
        if channels is not None:
            self._receive, self._send = channels
        else:  # an app built without ASGIChannels (tests): Starlette's wrapper, same frames
            self._receive, self._send = websocket.receive, websocket.send
        # the outbox: a deque with one waiter, lighter than asyncio.Queue on the hot path
        self._outbox: collections.deque[bytes | _Close] = collections.deque()
        self._replays = 0  # _Replay frames in the outbox
        self._wakeup: asyncio.Future[None] | None = None
        # the task writing now (a batch, or a send the transport held) and since when:
        # `check_stall` (run by one sweeper per process) cancels one older than
        # send_timeout, instead of a timer per batch
        self._flusher: asyncio.Task[None] | None = None
        self._flush_started = 0.0
        self._stalled = False
        self._writer: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None  # a direct send the transport held
        self._written: asyncio.Future[None] | None = None  # the reader waits for a held write
        self._peer_gone = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._invalid_frames = 0
        # the current streak of RATE_LIMITED answers (see _rate_limited)
        self._limited_since = self._limited_last = -math.inf
        self._limited_wait = 0.0
        self._violations = 0
        self._frames = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        offered = self.websocket.scope.get("subprotocols", [])
        await self.websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        self.services.metrics.connections.inc()
        self.services.connections.add(self)
        writer = self._writer = asyncio.create_task(self._write_loop())
        self._reader = asyncio.create_task(self._read_loop())
        self._joined_during_drain()
        try:
            await self._supervise(self._reader, writer)
        finally:
            self.services.connections.discard(self)
            await self._cleanup(writer)
            self.services.metrics.connections.dec()

    def _joined_during_drain(self) -> None:
        """A socket opened while the node drains is told to go elsewhere as the others
        were; once the drain window is over it is closed at once (1001)."""
        drain = self.services.drain_state
        if drain.started:
            self.draining()
        if drain.closing:
            self.close(GoingAway())

    async def _supervise(self, reader: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
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

    async def _cleanup(self, writer: asyncio.Task[None]) -> None:
        self.state = State.CLOSING  # nothing may start a send any more
        self.services.hub.drop(self)
        tasks = [
            t for t in (self._reader, writer, self._expiry, self._sending, *self._handlers) if t
        ]
        for task in tasks:
            task.cancel()
        # a second cancellation while we wait must not replace the one being raised
        # (anyio only swallows its own CancelledError), so it is absorbed here
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(tasks)

    def close(self, error: CloseError) -> None:
        """Close with `error.code` after what is already queued (or at once if overflowing)."""
        if self.state is State.CLOSING:
            return
        self.state = State.CLOSING
        self.services.metrics.closes.labels(str(int(error.code))).inc()
        if isinstance(error, SlowConsumer) or self._queued() >= self.settings.send_queue:
            self._outbox.clear()
            self._replays = 0
        self._put(_Close(int(error.code), error.reason))
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

    # -- writing -----------------------------------------------------------------------

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        """Queue one text frame; a full queue means the peer is not reading: 1013.
        A push with nothing queued ahead is written at once (`_send_now`), from the
        caller's turn (the hub's fan-out). `direct=False` for the answers to frames: they
        wait for the writer, which runs once the reader has handled the frames that came
        in together and writes their answers back to back (the peer is woken once for
        them, not once each: a third of the cost of a pipelined call on loopback).
        `replay=True` for history sent at once on subscribe, bounded by the retention and
        not a sign of a slow peer: not counted against the queue."""
        if self.state is State.CLOSING:
            return
        if direct and not self._outbox and self._flusher is None and self.state is State.OPEN:
            self._send_now(message)  # nothing ahead of it: no queue, no writer wake-up
            return
        if replay:
            self._replays += 1
            self._outbox.append(_Replay(message))
        elif self._queued() >= self.settings.send_queue and not self._write_backlog():
            self.close(SlowConsumer())
            return
        else:
            self._outbox.append(message)
        self._wake()

    def _queued(self) -> int:
        """Frames waiting that count against the send queue (history replays do not)."""
        return len(self._outbox) - self._replays

    def _write_backlog(self) -> bool:
        """The queue is full but the transport holds no write: the backlog is ours (the
        writer has not had its turn yet, e.g. answers to a batch of frames, then a burst
        of events), not a peer that does not read. Write it now, from this turn, as far
        as the transport takes it. True if the queue has room again (or the peer left)."""
        while self._outbox and self._flusher is None and self.state is State.OPEN:
            frame = self._outbox[0]
            if isinstance(frame, _Close) or self._peer_gone:
                break
            self._outbox.popleft()
            if type(frame) is _Replay:
                self._replays -= 1
            self._send_now(frame)
        return self._peer_gone or self._queued() < self.settings.send_queue

    def _send_now(self, message: bytes) -> None:
        """Write one frame from the caller's own turn of the loop. uvicorn's send returns
        without suspending unless the transport is paused (the peer reads slowly); then
        the rest of that send runs in a task, under the send deadline, and later frames
        queue behind it."""
        try:
            send = self._send({"type": "websocket.send", "text": message.decode()})
            blocked = send.send(None)
        except StopIteration:
            return
        except Exception as error:  # never into the caller (the hub's fan-out loop)
            if not isinstance(error, OSError | RuntimeError | WebSocketDisconnect):
                logger.error("a send failed", exc_info=error)
            self._peer_gone = True
            self._wake()  # the writer ends the connection
            return
        self._sending = self._flusher = asyncio.ensure_future(_finish(send, blocked))
        self._flush_started = time.monotonic()
        self._sending.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._flusher = self._sending = None
        self._release_reader()
        if task.cancelled():
            if self._stalled:
                self.close(SlowConsumer())
        elif (error := task.exception()) is not None:
            if not isinstance(error, OSError | RuntimeError | WebSocketDisconnect):
                logger.error("a send failed", exc_info=error)
            self._peer_gone = True
        self._wake()

    def _put(self, item: bytes | _Close) -> None:
        self._outbox.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _release_reader(self) -> None:
        """A held write is done: the reader, if it waits for that, reads on."""
        if self._written is not None and not self._written.done():
            self._written.set_result(None)

    async def _until_written(self) -> None:
        self._written = asyncio.get_running_loop().create_future()
        await self._written

    @property
    def _writing(self) -> bool:
        return self._flusher is not None

    async def _flush(self, task: asyncio.Task[None]) -> bool:
        """Write the queued frames up to a close marker; False if the peer is gone.

        `task` is the writer. One deadline covers the batch: a peer that cannot take it
        within `send_timeout` is not reading (1013).
        """
        self._flusher = task
        self._flush_started = time.monotonic()
        frame: bytes | _Close | None = None
        try:
            # the frames queued now, not those added while we write: one deadline each batch
            for _ in range(len(self._outbox)):
                if isinstance(self._outbox[0], _Close):
                    break
                frame = self._outbox.popleft()
                if type(frame) is _Replay:
                    self._replays -= 1
                text = frame.decode()  # type: ignore[union-attr]
                await self._send({"type": "websocket.send", "text": text})
                frame = None
        except asyncio.CancelledError:
            if not self._stalled:
                # cancelled by a close (expiry, drain, job finished), not by the deadline:
                # the frame was not written (uvicorn writes only after its wait), so it goes
                # back in front, ahead of the frames and the close that follow it
                if frame is not None:
                    self._outbox.appendleft(frame)
                    if type(frame) is _Replay:
                        self._replays += 1
                raise
            task.uncancel()
            self.close(SlowConsumer())
        except (OSError, RuntimeError, WebSocketDisconnect):
            return False
        finally:
            self._flusher = None
            self._release_reader()
            if self._outbox:
                self._wake()  # e.g. a close marker queued while we were writing
        return True

    def check_stall(self, now: float) -> None:
        """Called now and then (`time.monotonic()`) by the process's send sweeper: a batch
        still being written after `send_timeout` means the peer is not reading."""
        flusher = self._flusher
        if flusher is None or self._stalled:
            return
        # a send that just finished (its done-callback not run yet) cannot be cancelled:
        # only a cancel that takes counts as a stall
        if now - self._flush_started > self.settings.send_timeout and flusher.cancel():
            self._stalled = True

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        me = self._writer
        assert me is not None  # run() sets it before the loop starts
        while True:
            if self._peer_gone:
                return
            if self._outbox and isinstance(self._outbox[0], _Close):
                await self._send_close(self._outbox[0])
                return
            if not self._outbox or self._writing:
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            if not await self._flush(me):
                return  # the peer is gone

    async def _send_close(self, item: _Close) -> None:
        # close() waits for the transport like any send (behind what a slow peer has not
        # read yet): bound it, then give up on the peer
        with contextlib.suppress(TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
            async with asyncio.timeout(self.settings.close_timeout):
                await self.websocket.close(item.code, item.reason)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        if not origin_allowed(self.websocket, self.settings.allowed_origins):
            raise ForbiddenOrigin()
        self.state = State.AUTHENTICATING
        token = presented_token(self.websocket)
        principal = await (self._verify(token) if token else self._first_frame_auth())
        self._authenticated(principal)
        self.state = State.OPEN
        if self._on_open is not None:
            await self._on_open(self)
        await self._serve_frames()

    async def _serve_frames(self) -> None:
        """Hand each text frame to `on_frame`, whose answers the writer writes together
        once the frames that came in together are handled."""
        yield_every = max(1, min(YIELD_EVERY, self.settings.send_queue // 2))
        receive, on_frame, limit = self._receive, self._on_frame, self.settings.max_frame_bytes
        while True:
            # _receive_text inlined: one coroutine less per frame on the hot path
            message = await receive()
            text = message.get("text")
            if text is None or (len(text) * 4 > limit and len(text.encode()) > limit):
                raise self._not_usable(message, limit)
            on_frame(self, text)
            if self._flusher is not None:
                # the transport holds a write (the peer reads slowly): read no further
                # frames until it is done, as a plain `await send` would
                await self._until_written()
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

    def _authenticated(self, principal: Principal) -> None:
        self.principal = principal
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.create_task(self._expire(principal.expires_at))

    async def _expire(self, expires_at: int) -> None:
        """Warn `expiry_warning` seconds before exp, close with 4401 at exp (PROTOCOL.md 1.2)."""
        warn_in = expires_at - time.time() - self.settings.expiry_warning
        if warn_in > 0:
            await asyncio.sleep(warn_in)
        remaining = max(0.0, expires_at - time.time())
        self.enqueue(encode_event("auth.expiring", {"expires_in": round(remaining)}))
        await asyncio.sleep(remaining)
        self.close(AuthError("token expired"))

    async def refresh(self, token: str) -> Principal:
        """auth.refresh on an open socket: a fresh token for the same subject."""
        try:
            principal = await self._verify(token)
        except AuthError as error:
            raise PermissionDenied(f"token rejected: {error.reason}") from None
        if self.principal is not None and principal.sub != self.principal.sub:
            raise PermissionDenied("token rejected: it belongs to another subject")
        self._authenticated(principal)
        return principal

    def draining(self) -> None:
        """The server is shutting down: reconnect elsewhere (PROTOCOL.md 2.4)."""
        self.enqueue(encode_event("server.draining", {}))

    async def emit(self, event: str, data: Any) -> None:
        self.enqueue(encode_event(event, data))

    # -- answering ---------------------------------------------------------------------

    def answer_error(self, pkg_id: int | None, req_id: str | None, error: RequestError) -> None:
        self.enqueue(encode_error(pkg_id, req_id, error.status, error.to_error()), direct=False)
        if error.status is Status.RATE_LIMITED:
            self._rate_limited(getattr(error, "retry_after", 1))

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
            if self._violations >= self.settings.max_rate_limited:
                self.close(SustainedRateLimit())
        self._limited_last = now

    def invalid_frame(self, error: EnvelopeError) -> None:
        self.enqueue(
            encode_error(
                error.pkg_id, error.req_id, Status.INVALID_DATA, {"message": error.reason}
            ),
            direct=False,
        )
        self._invalid_frames += 1
        if self._invalid_frames >= self.settings.max_invalid_frames:
            self.close(PolicyViolation())

    def spawn(self, package: Package, req_id: str, data: JSONObject) -> None:
        """Run one request. A plain `def` handler runs inline, here: the hot path (echo, me,
        topic calls), no task, no await, as few calls as can be (each one shows in the
        echo benchmark). Others run concurrently, within the socket's in-flight cap."""
        self._invalid_frames = 0
        if package.id not in self._inline:
            self._start(package, req_id, data)
            return
        assert self.principal is not None  # only an authenticated socket gets here
        ctx = Context(self.principal, package, self.services, req_id, self)
        try:
            result, meta = self._dispatcher.call_inline(ctx, data)
            message = encode_ok(package.id, req_id, result, meta)
        except RequestError as error:
            self.answer_error(package.id, req_id, error)
            return
        except TypeError:  # orjson.JSONEncodeError: the handler returned something not JSON
            self._not_json(package, req_id)
            return
        self._answer(ctx, message)

    def _start(self, package: Package, req_id: str, data: JSONObject) -> None:
        if len(self._handlers) >= self.settings.max_inflight:
            self.answer_error(package.id, req_id, RateLimited(1, "too many requests in flight"))
            return
        task = asyncio.create_task(self._handle(package, req_id, data))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, package: Package, req_id: str, data: JSONObject) -> None:
        assert self.principal is not None
        ctx = Context(self.principal, package, self.services, req_id, self)
        try:
            result, meta = await self._dispatcher.call(ctx, data, "ws")
            message = encode_ok(package.id, req_id, result, meta)
        except RequestError as error:
            self.answer_error(package.id, req_id, error)
            return
        except TypeError:
            self._not_json(package, req_id)
            return
        self._answer(ctx, message)

    def _not_json(self, package: Package, req_id: str) -> None:
        logger.exception(
            "package %s answered data that is not JSON (req_id %s)", package.name, req_id
        )
        self.answer_error(package.id, req_id, ServerError())

    def _answer(self, ctx: Context, message: bytes) -> None:
        self.enqueue(message, direct=False)
        if ctx.after_answer is not None:
            for callback in ctx.after_answer:
                callback()


# -- frame handlers --------------------------------------------------------------------


def package_frame(connection: Connection, text: str) -> None:
    """`/ws`: a frame is a package request (PROTOCOL.md 2)."""
    try:
        pkg_id, req_id, data = parse_request(text)
    except EnvelopeError as error:
        connection.invalid_frame(error)
        return
    package = connection.packages.get(pkg_id)
    if package is None:
        unknown = UnknownPackage(f"no package has pkg_id {pkg_id}")
        connection.answer_error(pkg_id, req_id, unknown)
        return
    connection.spawn(package, req_id, data)


def ignore_frame(connection: Connection, text: str) -> None:
    """Sockets that only push (compatibility streams) ignore what the client sends."""


def echo_frame(connection: Connection, text: str) -> None:
    """`/ws/echo` (compatibility): answer each text frame with `Echo: <text>`."""
    connection.enqueue(f"Echo: {text}".encode(), direct=False)

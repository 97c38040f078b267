"""A socket's send side: a bounded queue, one writer task, direct writes, the 1013 decision.

Every frame the server sends goes through `Outbox.put`, which answers either "queued"
(None) or "close with this code" (SlowConsumer). The other way a peer shows it does not
read, a write still held by the transport after `send_timeout`, is decided here too
(`check_stall`, called by the process's one sweeper) and reported through `on_slow`.
Nothing else decides 1013.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocketDisconnect

from realtime.exceptions import CloseError, SlowConsumer

logger = logging.getLogger("realtime.socket")

Send = Callable[[Any], Coroutine[Any, Any, None]]
CloseSocket = Callable[[int, str], Awaitable[None]]
# what a write to a peer that left raises (uvicorn, Starlette): the socket ends quietly
PEER_GONE = (OSError, RuntimeError, WebSocketDisconnect)


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Replay(bytes):
    """A history frame queued on subscribe: bounded by the topic's retention, so it does
    not count against the send queue (a long replay is no sign of a slow peer)."""

    __slots__ = ()


async def _finish(send: Coroutine[Any, Any, None], blocked: Any) -> None:
    """Drive `send`, which already ran up to awaiting `blocked`, to its end, as a task
    would have: resume it when what it waits on is done, or throw in what that raised
    (a cancellation by the send deadline included). A task per direct write would cost
    its creation on every push; this runs only for the rare write the transport holds."""
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


class Outbox:
    """The queue and writer of one socket.

    `direct` is set once the socket is open: from then on a push with nothing queued
    ahead is written from the caller's own turn (the hub's fan-out), without a queue or a
    writer wake-up. `closed` once a close is decided: nothing more is queued.
    """

    def __init__(
        self,
        send: Send,
        close_socket: CloseSocket,
        *,
        limit: int,
        send_timeout: float,
        close_timeout: float,
        on_slow: Callable[[CloseError], None],
    ) -> None:
        self._send = send
        self._close_socket = close_socket
        self.limit = limit
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._on_slow = on_slow
        # a deque with one waiter, lighter than asyncio.Queue on the hot path
        self.queue: collections.deque[bytes | _Close] = collections.deque()
        self._replays = 0  # _Replay frames in the queue
        self._wakeup: asyncio.Future[None] | None = None
        # the task writing now (a batch, or a send the transport held) and since when:
        # `check_stall` cancels one older than send_timeout, instead of a timer per batch
        self.flusher: asyncio.Task[None] | None = None
        self.flush_started = 0.0
        self.stalled = False
        self.writer: asyncio.Task[None] | None = None
        self._sending: asyncio.Task[None] | None = None  # a direct send the transport held
        self._written: asyncio.Future[None] | None = None  # the reader waits for a held write
        self.peer_gone = False
        self.direct = False
        self.closed = False
        self.sent = 0  # frames and their bytes (UTF-8), for the metrics (read at a scrape)
        self.sent_bytes = 0

    def start(self) -> asyncio.Task[None]:
        self.writer = asyncio.create_task(self._write_loop())
        return self.writer

    def unlink(self) -> None:
        """The socket has ended (its tasks too): drop what refers back to it."""
        self.writer = self._sending = self.flusher = None
        self._on_slow = _ended

    def tasks(self) -> list[asyncio.Task[None]]:
        """What to cancel when the socket ends."""
        return [t for t in (self.writer, self._sending) if t is not None]

    # -- putting ---------------------------------------------------------------------

    def put(self, message: bytes, direct: bool = True, replay: bool = False) -> CloseError | None:
        """Queue one text frame; None, or SlowConsumer when the queue is full (the peer
        is not reading). `direct=False` for the answers to frames: they wait for the
        writer, which runs once the reader has handled the frames that came in together
        and writes their answers back to back (the peer is woken once for them, not once
        each: a third of the cost of a pipelined call on loopback). `replay=True` for
        history sent at once on subscribe: not counted against the queue."""
        if self.closed:
            return None
        if direct and self.direct and not self.queue and self.flusher is None:
            self._send_now(message)  # nothing ahead of it: no queue, no writer wake-up
            return None
        if replay:
            self._replays += 1
            self.queue.append(_Replay(message))
        elif self.queued() >= self.limit and not self._write_backlog():
            return SlowConsumer()
        else:
            self.queue.append(message)
        self._wake()
        return None

    def close(self, error: CloseError) -> None:
        """Queue the close after what is queued; a slow consumer's queue (or a full one)
        is dropped first: its peer would not read it anyway."""
        self.closed = True
        if isinstance(error, SlowConsumer) or self.queued() >= self.limit:
            self.queue.clear()
            self._replays = 0
        self.queue.append(_Close(int(error.code), error.reason))
        self._wake()

    def queued(self) -> int:
        """Frames waiting that count against the send queue (history replays do not)."""
        return len(self.queue) - self._replays

    def _write_backlog(self) -> bool:
        """The queue is full but the transport holds no write: the backlog is ours (the
        writer has not had its turn yet, e.g. answers to a batch of frames, then a burst
        of events), not a peer that does not read. Write it now, from this turn, as far
        as the transport takes it. True if the queue has room again (or the peer left)."""
        while self.queue and self.flusher is None and self.direct and not self.closed:
            frame = self.queue[0]
            if isinstance(frame, _Close) or self.peer_gone:
                break
            self.queue.popleft()
            if type(frame) is _Replay:
                self._replays -= 1
            self._send_now(frame)
        return self.peer_gone or self.queued() < self.limit

    def _send_now(self, message: bytes) -> None:
        """Write one frame from the caller's own turn of the loop. uvicorn's send returns
        without suspending unless the transport is paused (the peer reads slowly); then
        the rest of that send runs in a task, under the send deadline, and later frames
        queue behind it."""
        self.sent += 1
        self.sent_bytes += len(message)
        try:
            send = self._send({"type": "websocket.send", "text": message.decode()})
            blocked = send.send(None)
        except StopIteration:
            return
        except Exception as error:  # never into the caller (the hub's fan-out loop)
            if not isinstance(error, PEER_GONE):
                logger.error("a send failed", exc_info=error)
            self.peer_gone = True
            self._wake()  # the writer ends the connection
            return
        self._sending = self.flusher = asyncio.ensure_future(_finish(send, blocked))
        self.flush_started = time.monotonic()
        self._sending.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.flusher = self._sending = None
        self._release_reader()
        if task.cancelled():
            if self.stalled:
                self._on_slow(SlowConsumer())
        elif (error := task.exception()) is not None:
            if not isinstance(error, PEER_GONE):
                logger.error("a send failed", exc_info=error)
            self.peer_gone = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- the reader's backpressure ---------------------------------------------------

    def _release_reader(self) -> None:
        """A held write is done: the reader, if it waits for that, reads on."""
        if self._written is not None and not self._written.done():
            self._written.set_result(None)

    async def until_written(self) -> None:
        """Wait until the write the transport holds now is done."""
        self._written = asyncio.get_running_loop().create_future()
        await self._written

    # -- the send deadline -----------------------------------------------------------

    def check_stall(self, now: float) -> None:
        """Called now and then (`time.monotonic()`) by the process's send sweeper: a batch
        still being written after `send_timeout` means the peer is not reading."""
        flusher = self.flusher
        if flusher is None or self.stalled:
            return
        # a send that just finished (its done-callback not run yet) cannot be cancelled:
        # only a cancel that takes counts as a stall
        if now - self.flush_started > self._send_timeout and flusher.cancel():
            self.stalled = True

    # -- the writer ------------------------------------------------------------------

    async def flush(self, task: asyncio.Task[None]) -> bool:
        """Write the queued frames up to a close marker; False if the peer is gone.

        `task` is the writer. One deadline covers the batch: a peer that cannot take it
        within `send_timeout` is not reading (1013).
        """
        self.flusher = task
        self.flush_started = time.monotonic()
        frame: bytes | _Close | None = None
        try:
            # the frames queued now, not those added while we write: one deadline each batch
            for _ in range(len(self.queue)):
                if isinstance(self.queue[0], _Close):
                    break
                frame = self.queue.popleft()
                if type(frame) is _Replay:
                    self._replays -= 1
                text = frame.decode()  # type: ignore[union-attr]
                self.sent += 1
                self.sent_bytes += len(frame)  # type: ignore[arg-type]
                await self._send({"type": "websocket.send", "text": text})
                frame = None
        except asyncio.CancelledError:
            if not self.stalled:
                # cancelled by a close (expiry, drain, job finished), not by the deadline:
                # the frame was not written (uvicorn writes only after its wait), so it goes
                # back in front, ahead of the frames and the close that follow it
                if frame is not None:
                    self.queue.appendleft(frame)
                    if type(frame) is _Replay:
                        self._replays += 1
                raise
            task.uncancel()
            self._on_slow(SlowConsumer())
        except PEER_GONE:
            return False
        finally:
            self.flusher = None
            self._release_reader()
            if self.queue:
                self._wake()  # e.g. a close marker queued while we were writing
        return True

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        me = self.writer
        assert me is not None  # start() sets it before the loop runs
        try:
            while True:
                if self.peer_gone:
                    return
                if self.queue and isinstance(self.queue[0], _Close):
                    await self._send_close(self.queue[0])
                    return
                if not self.queue or self.flusher is not None:
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    continue
                if not await self.flush(me):
                    return  # the peer is gone
        finally:
            # the task ends with its exception, whose traceback holds this frame: were
            # the task still in it, that would be a cycle only the collector frees
            del me

    async def _send_close(self, item: _Close) -> None:
        # the close waits for the transport like any send (behind what a slow peer has not
        # read yet): bound it, then give up on the peer
        with contextlib.suppress(TimeoutError, *PEER_GONE):
            async with asyncio.timeout(self._close_timeout):
                await self._close_socket(item.code, item.reason)


def _ended(error: CloseError) -> None:
    """An ended socket's outbox: nothing is left to close."""

"""uvicorn's WebSocket protocol (websockets-sansio), holding less for each idle socket.

Given to uvicorn as `ws="realtime.socket.wsprotocol:LeanWebSocketProtocol"` by
`realtime serve`. What it changes, each measured with `python -m tests.bench.idle`
(docs/benchmarks.md, Idle memory), nothing on the wire:

- the receive queue: an `asyncio.Queue` is four deques (the items, the getters, the
  putters, its `join` event's waiters) of ~760 bytes each, allocated at once; the
  protocol has one reader and never a putter that waits, so `_Inbox` is a list and one
  future, and `receive` takes a message without Queue.get's extra coroutine;
- the "writable" event: an `asyncio.Event` allocates its deque of waiters up front; a
  send waits only while the transport is paused, so `_Writable` creates its waiters
  when someone waits;
- the handshake: the parsed upgrade request and the response (their headers, the
  token among them) are kept by uvicorn for the socket's whole life, and used only
  until the response is written; they are dropped then. websockets' parser holds the
  request for as long too (a local of its suspended generator): its headers are
  emptied once the scope has its own copy and the response is decided.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class _Inbox:
    """A FIFO with one waiting reader: what the protocol used asyncio.Queue for.

    The messages are a list read from `_head` on (popping the front of a list would copy
    it); it is emptied once read to the end. At most a burst of frames is ever queued:
    uvicorn stops reading from the transport while a message waits."""

    __slots__ = ("_head", "_items", "_others", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None
        # readers beyond the first (an application's route may receive from two
        # coroutines at once, as asyncio.Queue allowed): created only then
        self._others: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        others, self._others = self._others, None
        for other in others or ():
            if not other.done():
                other.set_result(None)  # each loops back to an empty check

    def empty(self) -> bool:
        return self._head == len(self._items)

    def qsize(self) -> int:
        return len(self._items) - self._head

    def pop(self) -> Any:
        """The first message (the caller checked it is not empty)."""
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items.clear()
            self._head = 0
        return item

    def waiter(self) -> asyncio.Future[None]:
        """A future done once a message is put (usually one reader waits: the socket's;
        further readers get a future each). Awaited
        by the reader's own coroutine: a coroutine of its own here would stay suspended,
        and allocated, for as long as the socket is idle."""
        waiter = asyncio.get_running_loop().create_future()
        if self._waiter is None or self._waiter.done():
            self._waiter = waiter
        else:  # another reader waits already: each its own future (one may be cancelled)
            if self._others is None:
                self._others = []
            self._others.append(waiter)
        return waiter


class _Writable:
    """asyncio.Event's set/clear/wait, with no deque until something waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with the three changes of the module's
    docstring; everything else is uvicorn's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: _Inbox = _Inbox()  # type: ignore[assignment]
        self.writable: _Writable = _Writable()  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # the scope has the headers (as bytes) and websockets has decided the response:
        # nothing reads the parsed request's headers again
        event.headers.clear()

    def start_keepalive(self) -> None:
        # called once, right after the handshake's response was written: from here on
        # uvicorn reads neither the request nor the response again
        super().start_keepalive()
        self.request = self.response = None  # type: ignore[assignment]

    async def receive(self) -> Any:
        # HOT PATH: uvicorn's receive with the queue's get inlined
        queue = self.queue
        while queue.empty():
            await queue.waiter()
        message = queue.pop()
        if self.read_paused and queue.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

"""The outbox (realtime/socket/outbox.py): the socket's queue, its writer and the one
place that decides 1013; and `_finish`: a send that could not complete at once (the
transport was paused) is driven to its end by a task, exactly as if a task had run it
from the start."""

from __future__ import annotations

import asyncio

import pytest

from realtime.exceptions import CloseError, SlowConsumer
from realtime.socket.outbox import Outbox, _finish

pytestmark = pytest.mark.anyio


async def _held_outbox(limit: int, slow: list[CloseError]) -> tuple[Outbox, asyncio.Future[None]]:
    """An open socket's outbox whose peer takes no write: each send waits on `held`."""
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(message: object) -> None:
        await held

    async def close_socket(code: int, reason: str) -> None: ...

    outbox = Outbox(
        send, close_socket, limit=limit, send_timeout=5, close_timeout=1, on_slow=slow.append
    )
    outbox.direct = True
    outbox.start()
    return outbox, held


async def test_put_answers_queued_until_the_queue_is_full_then_the_close_code() -> None:
    slow: list[CloseError] = []
    outbox, held = await _held_outbox(3, slow)
    assert outbox.put(b"held") is None  # written at once; the transport holds it
    answers = [outbox.put(f"q{i}".encode()) for i in range(4)]
    assert answers[:3] == [None, None, None]  # queued behind the held write
    assert isinstance(answers[3], SlowConsumer) and answers[3].code == 1013
    assert outbox.put(b"replay", replay=True) is None  # history does not count
    assert slow == []  # put answers; the owner closes
    held.set_result(None)
    for task in outbox.tasks():
        task.cancel()


async def test_a_write_held_past_the_send_timeout_is_reported_slow() -> None:
    slow: list[CloseError] = []
    outbox, _ = await _held_outbox(3, slow)
    outbox.put(b"held")
    outbox.check_stall(outbox.flush_started + 1)  # within send_timeout: nothing
    await asyncio.sleep(0)
    assert slow == []
    outbox.check_stall(outbox.flush_started + 6)
    await asyncio.sleep(0.01)
    assert [type(error) for error in slow] == [SlowConsumer]
    for task in outbox.tasks():
        task.cancel()


async def test_a_held_send_completes_when_the_transport_resumes() -> None:
    writable = asyncio.Event()
    written: list[str] = []

    async def send() -> None:  # uvicorn's send, reduced: wait until writable, then write
        await writable.wait()
        written.append("frame")

    held = send()
    blocked = held.send(None)  # what Connection._send_now does: run it up to its first wait
    task = asyncio.ensure_future(_finish(held, blocked))
    await asyncio.sleep(0.01)
    assert not task.done() and written == []
    writable.set()
    await asyncio.wait_for(task, 1)
    assert written == ["frame"]


async def test_a_held_send_is_cancelled_by_the_send_deadline() -> None:
    unwound: list[bool] = []

    async def send() -> None:
        try:
            await asyncio.Event().wait()  # the peer never reads again
        finally:
            unwound.append(True)

    held = send()
    task = asyncio.ensure_future(_finish(held, held.send(None)))
    await asyncio.sleep(0.01)
    task.cancel()  # what the sweeper does after send_timeout
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == [True]


# -- a Connection over uvicorn's real sans-I/O protocol and a transport in memory ---------

import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from typing import Any  # noqa: E402

from starlette.websockets import WebSocket  # noqa: E402
from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.websockets.websockets_sansio_impl import (  # noqa: E402
    WebSocketsSansIOProtocol,
)
from uvicorn.server import ServerState  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402

from realtime.exceptions import GoingAway  # noqa: E402
from realtime.metrics import Metrics  # noqa: E402
from realtime.settings import Settings  # noqa: E402
from realtime.socket.connection import ASGI_CHANNELS, Connection, State  # noqa: E402
from realtime.socket.frames import echo_frame  # noqa: E402
from realtime.socket.wsprotocol import LeanWebSocketProtocol  # noqa: E402
from tests.helpers import server_frames  # noqa: E402

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class MemoryTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def frames(self) -> list[tuple[str, bytes]]:
        """What the server wrote after the handshake, as (opcode, payload)."""
        return server_frames(bytes(self.out))


Scenario = Callable[[Connection, WebSocketsSansIOProtocol], Awaitable[None]]


ProtocolClass = type[WebSocketsSansIOProtocol]


@pytest.fixture(params=[WebSocketsSansIOProtocol, LeanWebSocketProtocol], ids=["uvicorn", "lean"])
def ws_protocol(request: pytest.FixtureRequest) -> ProtocolClass:
    """uvicorn's protocol, and the one `realtime serve` gives uvicorn (its own queue and
    writable flag): the same scenarios on both."""
    cls: ProtocolClass = request.param
    return cls


async def over_uvicorn(
    protocol_class: ProtocolClass, scenario: Scenario, **settings: str
) -> MemoryTransport:
    failures: list[BaseException] = []  # uvicorn logs an app's exception; we re-raise it

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope[ASGI_CHANNELS] = (receive, send)  # as the app's middleware leaves them
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        services = types.SimpleNamespace(
            settings=Settings.from_mapping(settings),
            metrics=Metrics(),
            connections=set(),
            hub=types.SimpleNamespace(drop=lambda connection: None),
            dispatcher=types.SimpleNamespace(inline=frozenset()),
            catalog=types.SimpleNamespace(by_id={}),
        )
        connection = Connection(websocket, services, echo_frame)  # type: ignore[arg-type]
        connection.state = State.OPEN
        connection.outbox.direct = True
        connection.outbox.start()
        await asyncio.sleep(0)
        try:
            await scenario(connection, protocol)
        except BaseException as failure:
            failures.append(failure)

    config = Config(app=app, ws="websockets-sansio", lifespan="off", ws_ping_interval=None)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(HANDSHAKE)
    for task in list(protocol.tasks):
        await task
    if failures:
        raise failures[0]
    return transport


async def test_frames_queued_behind_a_held_send_keep_their_order_then_the_close(
    ws_protocol: ProtocolClass,
) -> None:
    async def scenario(connection: Connection, protocol: Any) -> None:
        connection.enqueue(b"A0")  # written at once
        protocol.pause_writing()  # the peer stops reading
        connection.enqueue(b"A")  # held by the transport
        connection.enqueue(b"B")
        connection.enqueue(b"C")
        connection.close(GoingAway())
        await asyncio.sleep(0.05)
        protocol.resume_writing()
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario)
    assert transport.frames() == [
        ("TEXT", b"A0"),
        ("TEXT", b"A"),
        ("TEXT", b"B"),
        ("TEXT", b"C"),
        ("CLOSE", b"\x03\xe9server draining"),
    ]


async def test_a_close_during_a_held_flush_loses_no_frame(ws_protocol: ProtocolClass) -> None:
    """A task is flushing X when something other than the send deadline cancels it: X was
    not written, so it goes out before Y and the close, not never."""

    async def scenario(connection: Connection, protocol: Any) -> None:
        connection.outbox.queue.extend([b"X", b"Y"])
        protocol.pause_writing()

        async def reader() -> None:
            await connection.outbox.flush(connection._reader)
            await asyncio.sleep(10)

        connection._reader = asyncio.create_task(reader())
        await asyncio.sleep(0.01)
        connection.close(GoingAway())
        await asyncio.sleep(0.01)
        protocol.resume_writing()
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario)
    assert transport.frames() == [
        ("TEXT", b"X"),
        ("TEXT", b"Y"),
        ("CLOSE", b"\x03\xe9server draining"),
    ]


async def test_a_sweep_just_after_a_held_send_finished_is_no_stall(
    ws_protocol: ProtocolClass,
) -> None:
    """The sweeper may tick after a held send completed but before its callback ran: that
    is no stall, and the deadline must still work for the next held send (1013)."""

    async def scenario(connection: Connection, protocol: Any) -> None:
        loop = asyncio.get_running_loop()
        protocol.pause_writing()
        connection.enqueue(b"A")
        await asyncio.sleep(0)
        connection.outbox.flush_started -= connection.settings.send_timeout + 1
        protocol.resume_writing()
        loop.call_soon(lambda: connection.check_stall(time.monotonic()))
        await asyncio.sleep(0.01)
        assert not connection.outbox.stalled and connection.state is State.OPEN
        protocol.pause_writing()
        connection.enqueue(b"B")
        connection.outbox.flush_started -= connection.settings.send_timeout + 1
        connection.check_stall(time.monotonic())
        await asyncio.sleep(0.01)
        assert connection.state is State.CLOSING  # closed 1013 by the deadline
        assert connection.outbox.writer is not None
        connection.outbox.writer.cancel()

    transport = await over_uvicorn(ws_protocol, scenario)
    assert transport.frames()[0] == ("TEXT", b"A")


def client_frame(text: str) -> bytes:
    """A text frame as a client sends it (masked)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True)


async def test_answers_to_frames_that_came_in_together_keep_their_order(
    ws_protocol: ProtocolClass,
) -> None:
    """40 pipelined frames in one read: the reader handles them (yielding to the writer
    every few), the writer writes their answers; all of them, in order."""

    async def scenario(connection: Connection, protocol: Any) -> None:
        reader = asyncio.create_task(connection._serve_frames())
        protocol.data_received(b"".join(client_frame(f"q{i}") for i in range(40)))
        await asyncio.sleep(0)  # the reader handles a first run of them, then yields
        assert connection.outbox.queue  # their answers wait for the writer
        connection.enqueue(b"pushed")  # so a push waits behind them
        await asyncio.sleep(0.05)
        assert protocol.queue.qsize() == 0 and not connection.outbox.queue
        reader.cancel()
        connection.close(GoingAway())
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario)
    texts = [payload for opcode, payload in transport.frames() if opcode == "TEXT"]
    assert texts[0] == b"Echo: q0" and b"pushed" in texts[1:]
    answers = [t for t in texts if t != b"pushed"]
    assert answers == [f"Echo: q{i}".encode() for i in range(40)]


async def test_a_held_write_stops_the_reader_until_it_is_done(ws_protocol: ProtocolClass) -> None:
    """A peer that reads slowly: while the transport holds a write, the reader takes no
    further frames (backpressure reaches the peer's TCP window instead of our queue)."""

    async def scenario(connection: Connection, protocol: Any) -> None:
        protocol.pause_writing()
        reader = asyncio.create_task(connection._serve_frames())
        protocol.data_received(client_frame("A"))
        await asyncio.sleep(0.01)
        assert connection.outbox.flusher is connection.outbox.writer  # A's answer is held
        protocol.data_received(client_frame("B"))
        protocol.data_received(client_frame("C"))
        await asyncio.sleep(0.01)
        assert protocol.queue.qsize() == 1  # B was taken, C waits: the reader waits
        assert list(connection.outbox.queue) == [b"Echo: B"]
        protocol.resume_writing()
        await asyncio.sleep(0.01)
        assert protocol.queue.qsize() == 0  # the write done, the reader read on
        reader.cancel()
        connection.close(GoingAway())
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario)
    assert transport.frames() == [
        ("TEXT", b"Echo: A"),
        ("TEXT", b"Echo: B"),
        ("TEXT", b"Echo: C"),
        ("CLOSE", b"\x03\xe9server draining"),
    ]


async def test_our_own_backlog_at_a_full_queue_is_written_not_closed_1013(
    ws_protocol: ProtocolClass,
) -> None:
    """Answers wait for the writer; a burst of pushes comes before the writer's turn and
    fills the send queue. The transport holds nothing (the peer reads): the backlog is
    written from the pusher's turn, in order, and the socket stays open."""

    async def scenario(connection: Connection, protocol: Any) -> None:
        for i in range(3):
            connection.enqueue(f"answer{i}".encode(), direct=False)
        for i in range(10):  # same turn: the writer has not run
            connection.enqueue(f"push{i}".encode())
        assert connection.state is State.OPEN
        await asyncio.sleep(0.01)
        connection.close(GoingAway())
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario, REALTIME_SEND_QUEUE="4")
    texts = [payload for opcode, payload in transport.frames() if opcode == "TEXT"]
    assert texts == [
        *(f"answer{i}".encode() for i in range(3)),
        *(f"push{i}".encode() for i in range(10)),
    ]
    assert transport.frames()[-1] == ("CLOSE", b"\x03\xe9server draining")


async def test_a_peer_that_holds_writes_is_still_closed_1013_at_a_full_queue(
    ws_protocol: ProtocolClass,
) -> None:
    async def scenario(connection: Connection, protocol: Any) -> None:
        protocol.pause_writing()  # the peer stops reading
        for i in range(6):
            connection.enqueue(f"push{i}".encode())
        assert connection.state is State.CLOSING  # push0 held, push1-4 queued, push5: full
        protocol.resume_writing()
        assert connection.outbox.writer is not None
        await asyncio.wait_for(connection.outbox.writer, 2)

    transport = await over_uvicorn(ws_protocol, scenario, REALTIME_SEND_QUEUE="4")
    assert transport.frames()[-1] == ("CLOSE", b"\x03\xf5slow consumer")


async def test_the_lean_protocol_serves_two_readers_as_uvicorns_does() -> None:
    """An application's own route may receive from two coroutines at once: each gets a
    message, and one reader cancelled does not take the other's wake-up with it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from realtime.socket.wsprotocol import _Inbox

    class Transport:
        def resume_reading(self) -> None: ...

    for cls, inbox in ((WebSocketsSansIOProtocol, asyncio.Queue), (LeanWebSocketProtocol, _Inbox)):
        protocol = cls.__new__(cls)  # the receive side only: no handshake
        protocol.queue = inbox()
        protocol.read_paused, protocol.transport = False, Transport()
        cancelled = asyncio.create_task(protocol.receive())
        first, second = (asyncio.create_task(protocol.receive()) for _ in range(2))
        await asyncio.sleep(0)
        cancelled.cancel()
        protocol.queue.put_nowait({"n": 1})
        protocol.queue.put_nowait({"n": 2})
        async with asyncio.timeout(5):
            got = await asyncio.gather(first, second)
        assert sorted(m["n"] for m in got) == [1, 2], cls.__name__
        assert cancelled.cancelled()

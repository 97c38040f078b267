"""A request/answer load generator: many sockets, each keeping K requests in flight.

Each socket sends `pipeline` requests at once, then one new request per answer, matched
by `req_id` (answers may come back in any order). After `warmup` seconds the answers are
counted and their latency (send to matching answer) recorded for `duration` seconds;
then sending stops, the requests still in flight are awaited (at most `drain_timeout`
seconds) and the sockets are closed. The run is bounded in time and in requests
(`max_requests` per socket); it only talks to the URL it is given (127.0.0.1 here).

The client is picows (Cython, callbacks, no task per message) when it is installed, so
the load generator costs far less CPU per message than the server; the websockets
library is the fallback. Both share `_Socket`, which holds the per-socket logic.

The wire is realtime's by default (JSON envelopes, answers matched by their `req_id`); a
`Workload` may speak another: its `answer` finds the request id in an answer frame, and
its `control` handles the frames that are not answers (a handshake the socket must
finish before it sends requests, the peer's keepalive pings): the Socket.IO echo of
tests/bench/compare/workloads.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from tests.bench.common.probes import Probe, SelfCPU
from tests.bench.report import RunResult

Payload = bytes | str  # a text frame as the client library gives it
# (request id, decoded answer) of an answer frame; None: not an answer (a control frame)
Answer = Callable[[Payload], tuple[str, Any] | None]
# a control frame -> (a frame to send back or None, whether the socket is now ready);
# None: a frame the wire does not expect (counted as unmatched)
Control = Callable[[Payload], tuple[bytes | None, bool] | None]


def envelope_answer(payload: Payload) -> tuple[str, Any]:
    """realtime's wire: every frame is a JSON answer carrying its `req_id`."""
    answer = orjson.loads(payload)
    return answer["req_id"], answer


@dataclass(frozen=True)
class Workload:
    """What to send where: `make_request(req_id)` gives a frame, `check(answer)` judges it.

    `answer` and `control` are the wire (see the module's docstring); with a `control`,
    each socket sends requests only once `control` has said it is ready.
    """

    name: str
    url: str
    make_request: Callable[[str], bytes]
    check: Callable[[Any], bool]
    headers: Mapping[str, str] = field(default_factory=dict)
    answer: Answer = envelope_answer
    control: Control | None = None


def envelope(pkg_id: int, data: Any) -> Callable[[str], bytes]:
    """A request builder for `{"pkg_id", "req_id", "data"}` with fixed data (one concat)."""
    head = b'{"pkg_id":%d,"req_id":"' % pkg_id
    tail = b'","data":' + orjson.dumps(data) + b"}"
    return lambda req_id: head + req_id.encode() + tail


def status_ok(answer: dict[str, Any]) -> bool:
    return answer.get("status_code") == 0 and "data" in answer


def payload_of(size: int) -> dict[str, str]:
    """A `data` object whose JSON encoding is `size` bytes (at least 8)."""
    return {"s": "x" * max(0, size - len('{"s":""}'))}


@dataclass(frozen=True)
class LoadOptions:
    connections: int = 50
    pipeline: int = 16
    warmup: float = 2.0
    duration: float = 10.0
    drain_timeout: float = 5.0
    connect_timeout: float = 10.0
    max_requests: int = 10_000_000  # per socket: a hard bound besides the clock
    client: str = "auto"  # "picows", "websockets" or "auto" (picows when installed)


class _Run:
    """State shared by every socket of one run."""

    def __init__(self, workload: Workload, options: LoadOptions) -> None:
        self.make_request = workload.make_request
        self.check = workload.check
        self.answer = workload.answer
        self.control = workload.control
        self.pipeline = options.pipeline
        self.max_requests = options.max_requests
        self.sending = True
        self.recording = False
        self.in_flight = 0
        self.completed = 0
        self.errors = 0
        self.unmatched = 0
        self.dropped = 0
        self.latencies: list[float] = []


class _Socket:
    """One socket's requests: ids, send times, matching answers."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.pending: dict[str, float] = {}
        self.sent = 0
        self.closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if run.control is None:
            self.ready.set_result(None)  # realtime's wire: ready once connected

    def next_frame(self) -> bytes | None:
        run = self.run
        if not run.sending or self.sent >= run.max_requests or self.closed:
            return None
        self.sent += 1
        req_id = str(self.sent)
        run.in_flight += 1
        self.pending[req_id] = time.perf_counter()
        return run.make_request(req_id)

    def on_answer(self, payload: Payload) -> bool:
        """Count an answer; False if the frame is none (then it is for `on_control`)."""
        now = time.perf_counter()
        run = self.run
        try:
            decoded = run.answer(payload)
            if decoded is None:
                return False
            req_id, answer = decoded
            started = self.pending.pop(req_id)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            run.unmatched += 1
            return True
        run.in_flight -= 1
        if run.recording:
            run.completed += 1
            run.latencies.append(now - started)
            if not run.check(answer):
                run.errors += 1
        return True

    def on_control(self, payload: Payload) -> bytes | None:
        """A frame that is not an answer: the frame to send back, if any."""
        handled = self.run.control(payload) if self.run.control is not None else None
        if handled is None:
            self.run.unmatched += 1
            return None
        reply, ready = handled
        if ready and not self.ready.done():
            self.ready.set_result(None)
        return reply

    def on_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.run.in_flight -= len(self.pending)
            if self.run.sending:
                self.run.dropped += 1
            self.pending.clear()


class _Client(Protocol):
    async def connect(self, url: str, headers: Mapping[str, str]) -> None: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


def _picows_client(run: _Run) -> _Client:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    class Listener(WSListener):  # type: ignore[misc]
        def __init__(self, socket: _Socket) -> None:
            super().__init__()
            self.socket = socket
            self.transport: WSTransport | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type is WSMsgType.TEXT:
                payload = frame.get_payload_as_bytes()
                if self.socket.on_answer(payload):
                    self.send_next()
                elif (reply := self.socket.on_control(payload)) is not None:
                    transport.send(WSMsgType.TEXT, reply)
            elif frame.msg_type is WSMsgType.CLOSE:
                self.socket.on_closed()
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.socket.on_closed()

        def send_next(self) -> None:
            message = self.socket.next_frame()
            if message is not None and self.transport is not None:
                self.transport.send(WSMsgType.TEXT, message)

    class Client:
        def __init__(self) -> None:
            self.socket = _Socket(run)
            self.transport: WSTransport | None = None
            self.listener: Listener | None = None

        async def connect(self, url: str, headers: Mapping[str, str]) -> None:
            self.transport, self.listener = await ws_connect(
                lambda: Listener(self.socket), url, extra_headers=dict(headers)
            )
            await self.socket.ready

        def start(self) -> None:
            assert self.listener is not None
            for _ in range(run.pipeline):
                self.listener.send_next()

        async def close(self) -> None:
            if self.transport is None or self.transport.is_disconnected():
                return
            with contextlib.suppress(Exception):
                self.transport.send_close(WSCloseCode.OK)
                async with asyncio.timeout(2):
                    await self.transport.wait_disconnected()
            self.transport.disconnect()

    return Client()


def _websockets_client(run: _Run) -> _Client:
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed

    class Client:
        def __init__(self) -> None:
            self.socket = _Socket(run)
            self.ws: ClientConnection | None = None
            self.reader: asyncio.Task[None] | None = None

        async def connect(self, url: str, headers: Mapping[str, str]) -> None:
            self.ws = await connect(
                url, additional_headers=dict(headers), compression=None, max_size=None
            )
            while not self.socket.ready.done():  # a wire with a handshake (`control`)
                await self._on_control(await self.ws.recv())

        def start(self) -> None:
            self.reader = asyncio.create_task(self._read())

        async def _send_next(self) -> None:
            message = self.socket.next_frame()
            if message is not None and self.ws is not None:
                await self.ws.send(message.decode())

        async def _on_control(self, message: Payload) -> None:
            reply = self.socket.on_control(message)
            if reply is not None and self.ws is not None:
                await self.ws.send(reply.decode())

        async def _read(self) -> None:
            assert self.ws is not None
            try:
                for _ in range(run.pipeline):
                    await self._send_next()
                async for message in self.ws:
                    if self.socket.on_answer(message):
                        await self._send_next()
                    else:
                        await self._on_control(message)
            except ConnectionClosed:
                pass
            finally:
                self.socket.on_closed()

        async def close(self) -> None:
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await self.ws.close()
            if self.reader is not None:
                self.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.reader

    return Client()


def client_kind(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    try:
        import picows  # noqa: F401
    except ImportError:
        return "websockets"
    return "picows"


async def run_request_reply(
    workload: Workload,
    options: LoadOptions,
    probes: Mapping[str, Probe] | None = None,
    round_: int = 0,
) -> RunResult:
    """One run: connect, warm up, measure for `options.duration`, drain, close.

    Each probe is started and stopped around the measurement window; its value lands in
    `RunResult.probes` under its name (shown as a percentage column by `report`).
    """
    probes = probes or {}
    run = _Run(workload, options)
    factory = _picows_client if client_kind(options.client) == "picows" else _websockets_client
    clients = [factory(run) for _ in range(options.connections)]
    async with asyncio.timeout(options.connect_timeout):
        outcomes = await asyncio.gather(
            *(c.connect(workload.url, workload.headers) for c in clients),
            return_exceptions=True,
        )
    connected = [c for c, o in zip(clients, outcomes, strict=True) if o is None]
    failed = len(clients) - len(connected)
    for client in connected:
        client.start()

    await asyncio.sleep(options.warmup)
    client_cpu = SelfCPU()
    client_cpu.start()
    for probe in probes.values():
        probe.start()
    run.recording = True
    started = time.perf_counter()
    await asyncio.sleep(options.duration)
    run.recording = run.sending = False
    window = time.perf_counter() - started
    own = client_cpu.stop()
    measured = {name: probe.stop() for name, probe in probes.items()}

    deadline = time.monotonic() + options.drain_timeout
    while run.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.gather(*(c.close() for c in connected), return_exceptions=True)

    return RunResult(
        scenario=workload.name,
        round=round_,
        connections=options.connections,
        pipeline=options.pipeline,
        duration=window,
        completed=run.completed,
        errors=run.errors + run.unmatched,
        failed_connections=failed + run.dropped,
        client_cpu=own,
        probes=measured,
        latencies_ms=[1000 * latency for latency in run.latencies],
        notes={
            "client": client_kind(options.client),
            "undrained": run.in_flight,
            "unmatched": run.unmatched,
            "failures": [repr(o) for o in outcomes if o is not None][:3],
        },
    )

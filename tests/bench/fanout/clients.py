"""picows clients speaking each server's protocol: subscribers, and one publisher.

A `Dialect` knows one wire protocol: the URL, the handshake (what to send on connect and
on each control frame until the socket is ready), the publish frame, and how a delivery
looks (a byte prefix, tested on every frame) and where its number and data are (parsed
only on the sampled subscribers). picows calls `Peer.on_ws_frame` for each frame, without a task or
a coroutine per message, so the client spends far less CPU per delivery than a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from tests.bench.fanout.apps import TOPIC

SUBSCRIBER = "subscriber"
PUBLISHER = "publisher"


class Dialect:
    """One server's wire protocol; the defaults are realtime's (PROTOCOL.md 2, 3)."""

    name = "realtime"
    delivery_prefix = b'{"event":"message"'

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = tokens or {}
        self._published = 0

    def url(self, base: str, role: str) -> str:
        return f"{base}/ws"

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def on_open(self, peer: Peer) -> None:
        if peer.role == SUBSCRIBER:
            peer.send(b'{"pkg_id":30,"req_id":"s","data":{"topic":"%s"}}' % TOPIC.encode())
        else:
            peer.set_ready()

    def on_control(self, peer: Peer, payload: bytes) -> None:
        answer = orjson.loads(payload)
        ok = answer.get("status_code") == 0
        if answer.get("req_id") == "s":
            peer.set_ready() if ok else peer.fail(f"subscribe answered {answer}")
        elif not ok:
            peer.errors += 1

    def publish_frame(self, data: bytes) -> bytes:
        self._published += 1
        return b'{"pkg_id":32,"req_id":"p%d","data":{"topic":"%s","data":%s}}' % (
            self._published,
            TOPIC.encode(),
            data,
        )

    def delivery(self, payload: bytes) -> tuple[int, Any]:
        """(the publication's sequence number as the server numbered it, its data)."""
        message = orjson.loads(payload)
        return int(message["offset"].rpartition(":")[2]), message["data"]


class SocketIO(Dialect):
    """Engine.IO 4 / Socket.IO 5 text packets over a WebSocket-only transport."""

    name = "socketio"
    delivery_prefix = b'42["message",'

    def url(self, base: str, role: str) -> str:
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    def headers(self, role: str) -> dict[str, str]:
        return {}

    def on_open(self, peer: Peer) -> None:
        pass  # the server speaks first (Engine.IO OPEN)

    def on_control(self, peer: Peer, payload: bytes) -> None:
        if payload == b"2":  # Engine.IO PING: answer PONG
            peer.send(b"3")
        elif payload[:1] == b"0":  # Engine.IO OPEN: connect to the namespace "/"
            peer.send(b"40")
        elif payload[:2] == b"40":  # Socket.IO CONNECT answered
            if peer.role == SUBSCRIBER:
                peer.send(b'420["subscribe","%s"]' % TOPIC.encode())  # with ack id 0
            else:
                peer.set_ready()
        elif payload[:3] == b"430":  # the subscribe's acknowledgement
            peer.set_ready()
        elif payload[:2] == b"44":
            peer.fail(f"Socket.IO connect error {payload[:200]!r}")

    def publish_frame(self, data: bytes) -> bytes:
        return b'42["publish",{"topic":"%s","data":%s}]' % (TOPIC.encode(), data)

    def delivery(self, payload: bytes) -> tuple[int, Any]:
        data = orjson.loads(payload[2:])[1]
        return data["i"], data  # no server numbering: the publisher's (one publisher)


class Channels(Dialect):
    """The Channels app's own JSON: `{"topic", "data"}` in, `{"event", "topic", "data"}` out."""

    name = "channels"

    def url(self, base: str, role: str) -> str:
        return f"{base}/ws/" + ("?pub=1" if role == PUBLISHER else "")

    def headers(self, role: str) -> dict[str, str]:
        return {}

    def on_open(self, peer: Peer) -> None:
        peer.set_ready()  # group_add ran before accept: subscribed at the handshake

    def on_control(self, peer: Peer, payload: bytes) -> None:
        peer.errors += 1

    def publish_frame(self, data: bytes) -> bytes:
        return b'{"topic":"%s","data":%s}' % (TOPIC.encode(), data)

    def delivery(self, payload: bytes) -> tuple[int, Any]:
        data = orjson.loads(payload)["data"]
        return data["i"], data


class Bare(Channels):
    """The bare Starlette ceiling speaks the Channels app's JSON."""

    name = "bare"


DIALECTS: dict[str, type[Dialect]] = {
    "realtime": Dialect,
    "socketio": SocketIO,
    "channels": Channels,
    "bare": Bare,
}

OnDelivery = Callable[["Peer", bytes], None]


class Peer(WSListener):  # type: ignore[misc]
    """One socket. Deliveries go to `on_delivery`; anything else to the dialect."""

    def __init__(
        self, dialect: Dialect, role: str, on_delivery: OnDelivery, sampled: bool = False
    ) -> None:
        super().__init__()
        self.dialect = dialect
        self.role = role
        self.on_delivery = on_delivery
        self.prefix = dialect.delivery_prefix
        self.sampled = sampled
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.count = 0  # deliveries received
        self.last = 0  # the last sequence number seen (sampled subscribers only)
        self.skipped = 0  # sequence numbers jumped over (sampled subscribers only)
        self.disorder = 0  # deliveries duplicated or going backwards (sampled)
        self.errors = 0
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.dialect.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(self.prefix):
                self.on_delivery(self, payload)
            else:
                self.dialect.on_control(self, payload)
        elif frame.msg_type is WSMsgType.CLOSE:
            self.closed = True
            self.fail(f"closed by the server: {frame.get_close_code()}")
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.fail("disconnected")

    def send(self, message: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.send(WSMsgType.TEXT, message)

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()

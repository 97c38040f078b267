"""One client process of the idle bench: holds `--count` idle WebSockets open.

    python -m tests.bench.idle.client --port P --path /ws --count 5000 [--tokens FILE]

A raw asyncio protocol per socket, not a WebSocket library: the bench measures the
server, and a client holding 20,000 sockets must stay small and quick. Each socket sends
its upgrade request (with `Authorization: Bearer <token>`, the tokens of `--tokens`, one
a line, taken in turn), one text frame (an
`echo` request, pkg_id 40) and waits for the answer: the server has then authenticated
it and served a frame, as any client that is in. Then it idles, answering the server's
keepalive pings. The process prints `ready <open> <failed>` once every socket is open
or has failed, then waits for a line on stdin and resets every socket (SO_LINGER 0: no
TIME_WAIT left to hold the ports for the next run).

`--socketio`: the sockets speak Engine.IO 4 / Socket.IO 5 instead (a python-socketio
server of tests.bench.compare): they connect to the namespace `/`, send one `echo`
event with an acknowledgement id, wait for the acknowledgement, then idle, answering
Engine.IO's pings (`2` -> `3`) as well as the WebSocket ones.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import socket
import struct
import sys
from pathlib import Path
from typing import cast

from tests.bench.common.runner import run

ECHO = b'{"pkg_id":40,"req_id":"1","data":{}}'
SOCKETIO_ECHO = b'421["echo",{}]'  # Engine.IO message, Socket.IO event with ack id 1
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA
BATCH = 200  # handshakes in flight per process: under uvicorn's backlog of 2048


def frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires of a client), payload under 64 KiB."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    return head + mask + masked


class IdleSocket(asyncio.Protocol):
    """Upgrade, one echo, then idle: `answered` is done (True) once the echo came back."""

    def __init__(
        self, request: bytes, answered: asyncio.Future[bool], socketio: bool = False
    ) -> None:
        self._request = request
        self.answered = answered
        self.socketio = socketio
        self._buffer = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            head, found, rest = self._buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self._upgraded, self._buffer = True, rest
            if not self.socketio:  # Engine.IO's server speaks first
                self._write(frame(OP_TEXT, ECHO))
        self._frames()

    def _frames(self) -> None:
        """Server frames (never masked): the echo's answer, pings, a close."""
        while len(self._buffer) >= 2:
            opcode, size = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F
            start = 2
            if size == 126:
                if len(self._buffer) < 4:
                    return
                (size,), start = struct.unpack("!H", self._buffer[2:4]), 4
            elif size == 127:
                if len(self._buffer) < 10:
                    return
                (size,), start = struct.unpack("!Q", self._buffer[2:10]), 10
            if len(self._buffer) < start + size:
                return
            payload = self._buffer[start : start + size]
            self._buffer = self._buffer[start + size :]
            if opcode == OP_PING:
                self._write(frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._fail(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")
            elif opcode == OP_TEXT and self.socketio:
                self._socketio(payload)
            elif opcode == OP_TEXT and not self.answered.done():
                self.answered.set_result(True)

    def _socketio(self, payload: bytes) -> None:
        if payload == b"2":  # Engine.IO ping
            self._write(frame(OP_TEXT, b"3"))
        elif payload[:1] == b"0":  # Engine.IO open: connect to the namespace "/"
            self._write(frame(OP_TEXT, b"40"))
        elif payload[:2] == b"40":  # connected: one echo
            self._write(frame(OP_TEXT, SOCKETIO_ECHO))
        elif payload[:3] == b"431" and not self.answered.done():  # its acknowledgement
            self.answered.set_result(True)
        elif payload[:2] == b"44":
            self._fail(f"Socket.IO connect error {payload[:200]!r}")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, why: str) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"connection lost: {exc}"))

    def reset(self) -> None:
        """Drop the connection with a RST: nothing left in TIME_WAIT."""
        if self.transport is None or self.transport.is_closing():
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def upgrade_request(host: str, port: int, path: str, token: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *([f"Authorization: Bearer {token}"] if token else []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_one(args: argparse.Namespace, request: bytes) -> IdleSocket | None:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()
    try:
        _, protocol = await loop.create_connection(
            lambda: IdleSocket(request, answered, args.socketio),
            args.host,
            args.port,
            local_addr=(args.source, 0) if args.source else None,
        )
        async with asyncio.timeout(args.timeout):
            await answered
    except (OSError, TimeoutError) as error:
        print(f"a socket failed: {error!r}", file=sys.stderr)
        return None
    return protocol


async def hold(args: argparse.Namespace) -> None:
    tokens = args.tokens.read_text().split() if args.tokens else [None]
    requests = [upgrade_request(args.host, args.port, args.path, token) for token in tokens]
    sockets: list[IdleSocket] = []
    failed = 0
    for start in range(0, args.count, BATCH):
        size = min(BATCH, args.count - start)
        batch = [open_one(args, requests[(start + n) % len(requests)]) for n in range(size)]
        for opened in await asyncio.gather(*batch):
            if opened is None:
                failed += 1
            else:
                sockets.append(opened)
    print(f"ready {len(sockets)} {failed}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for idle in sockets:
        idle.reset()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.idle.client", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tokens", type=Path, help="a file of tokens, one a line")
    parser.add_argument("--source", help="local address to connect from (127.0.0.x)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per socket, seconds")
    parser.add_argument("--socketio", action="store_true", help="speak Engine.IO/Socket.IO")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run(hold(args))


if __name__ == "__main__":
    main()

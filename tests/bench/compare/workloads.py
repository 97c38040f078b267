"""The echo workload of each system for the request/answer load generator
(tests/bench/loadgen.py): what it sends, where, and how its answers look.

Every system echoes the same `data` (`--payload-bytes` of JSON, 64 by default): realtime,
bare Starlette, the bare ASGI callable, Channels and picows in realtime's envelope
(`{"pkg_id": 40, "req_id", "data"}` answered with the same `req_id`, `status_code` 0 and
the data); python-socketio in its own wire, where a request/answer is an event with an
acknowledgement: `42<id>["echo",<data>]` answered `43<id>[<data>]`, after the Engine.IO /
Socket.IO handshake (`0{...}` -> `40` -> `40{...}`), the server's pings (`2`) answered
`3`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson

from tests.bench import scenarios
from tests.bench.loadgen import Payload, Workload, envelope, payload_of, status_ok
from tests.bench.scenarios import ECHO_PKG_ID, Target

SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"

Builder = Callable[[Target], Workload]


def realtime(name: str) -> Builder:
    """The `echo` package on an authenticated `/ws`: tests.bench's own `echo` scenario."""
    return lambda target: dataclasses.replace(scenarios.echo(target), name=name)


def envelope_echo(name: str, path: str) -> Builder:
    """An envelope echo on `path`, no authentication (the baselines)."""

    def build(target: Target) -> Workload:
        return Workload(
            name=name,
            url=target.url(path),
            make_request=envelope(ECHO_PKG_ID, payload_of(target.payload_bytes)),
            check=lambda answer: status_ok(answer) and answer.get("pkg_id") == ECHO_PKG_ID,
        )

    return build


def _bytes(payload: Payload) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def socketio_answer(payload: Payload) -> tuple[str, Any] | None:
    """An acknowledgement `43<id>[...]`: (its id, its arguments); None for other packets."""
    packet = _bytes(payload)
    if not packet.startswith(b"43"):
        return None
    start = packet.index(b"[")
    return packet[2:start].decode(), orjson.loads(packet[start:])


def engineio_control(payload: Payload) -> tuple[bytes | None, bool] | None:
    """The handshake and the pings; None for anything else (a connect error `44`)."""
    packet = _bytes(payload)
    if packet == b"2":  # Engine.IO ping
        return b"3", False
    if packet[:1] == b"0":  # Engine.IO open: connect to the namespace "/"
        return b"40", False
    if packet[:2] == b"40":  # connected: ready for events
        return None, True
    return None


def socketio_echo(name: str) -> Builder:
    """An `echo` event with an acknowledgement id (the request id): python-socketio's
    handler returns the data, the acknowledgement carries it back."""

    def build(target: Target) -> Workload:
        tail = b'["echo",' + orjson.dumps(payload_of(target.payload_bytes)) + b"]"
        return Workload(
            name=name,
            url=target.url(SOCKETIO_PATH),
            make_request=lambda req_id: b"42" + req_id.encode() + tail,
            check=lambda answer: isinstance(answer, list) and len(answer) == 1,
            answer=socketio_answer,
            control=engineio_control,
        )

    return build

"""Hostile clients speak raw bytes: what httpx or websockets would refuse to send."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import orjson


def connect(address: str, timeout: float = 10) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response with a Content-Length: (status, lowercased headers, body). The
    socket's timeout bounds a wait for an answer that never comes."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines)}
    while len(body) < int(fields["content-length"]):
        body += _received(sock)
    return int(status_line.split()[1]), fields, body


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection without an answer")
    return data


def http_request(
    address: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body_parts: Iterable[bytes] = (),
) -> tuple[int, dict[str, str], bytes]:
    """Send the head and the body parts as given (possibly fewer bytes than declared),
    then read the answer."""
    with connect(address) as sock:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n{head}\r\n".encode())
        for part in body_parts:
            sock.sendall(part)
        return read_response(sock)


def chunk(data: bytes) -> bytes:
    """One chunk of a `Transfer-Encoding: chunked` body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def json_of(body: bytes) -> object:
    return orjson.loads(body)

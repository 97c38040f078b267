"""Issue 11, item 10: a token never reaches a log, whatever spelling the server accepts
and whatever logger or level writes it. Before, `/ws?%74oken=<jwt>` (accepted: the query
is percent-decoded) kept the token in uvicorn's log lines, and a malformed
`Sec-WebSocket-Protocol: bearer.<jwt> @` logged it at DEBUG in a traceback."""

from __future__ import annotations

import io
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import build_app, make_settings
from tests.helpers import ws_call, ws_connect
from tests.hostile.raw import connect
from tests.nodes import Node, mint, node

pytestmark = pytest.mark.anyio
ECHO = 40


def percent_encoded(text: str) -> str:
    return "".join(f"%{ord(char):02X}" for char in text)


def secrets_of(token: str) -> list[str]:
    """The token as any log line could carry it: whole, its signature, percent-encoded."""
    return [token, token.split(".")[2], percent_encoded(token), percent_encoded(token)[:60]]


@pytest.fixture
def debug_node(tmp_path: Path) -> Iterator[Node]:
    with node(tmp_path, "debug", REALTIME_LOG_LEVEL="debug") as served:
        yield served


def stopped_output(served: Node) -> str:
    served.process.send_signal(signal.SIGINT)
    served.process.wait(10)
    return served.output()


def handshake(address: str, headers: dict[str, str]) -> bytes:
    """A WebSocket handshake sent as raw bytes (websockets refuses to send a malformed
    subprotocol list); the server's answer head."""
    with connect(address) as sock:
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{fields}\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
        return answer


async def test_every_query_spelling_the_server_accepts_is_redacted(
    tmp_path: Path, debug_node: Node
) -> None:
    token = mint(tmp_path, "alice")
    spellings = [
        f"/ws?%74oken={token}",
        f"/ws?t%6Fken={token}",
        f"/ws?{percent_encoded('token')}={token}",
        f"/ws?token={percent_encoded(token)}",
        f"/ws?a=1&%74oken=%65{token[1:]}&b=2",
    ]
    for path in spellings:
        ws = await ws_connect(debug_node.address, path)
        assert (await ws_call(ws, ECHO, {"via": path[:12]}))["status_code"] == 0, path
        await ws.close()
    async with httpx.AsyncClient(base_url=f"http://{debug_node.address}") as http:
        assert (await http.get(f"/health?%74oken={token}")).status_code == 200
        control = await ws_connect(
            debug_node.address, additional_headers={"Authorization": f"Bearer {token}"}
        )
        assert (await ws_call(control, ECHO, {"control": 1}))["data"] == {"control": 1}
        await control.close()
    output = stopped_output(debug_node)
    for secret in secrets_of(token):
        assert secret not in output
    assert '"WebSocket /ws?%74oken=[redacted]" [accepted]' in output  # uvicorn, INFO
    assert "< GET /ws?t%6Fken=[redacted] HTTP/1.1" in output  # websockets, DEBUG
    # the access log's formatter reads its arguments: the line is written, not broken
    assert '"GET /health?%74oken=[redacted] HTTP/1.1" 200' in output
    assert "--- Logging error ---" not in output


async def test_a_malformed_bearer_subprotocol_is_not_logged_at_debug(
    tmp_path: Path, debug_node: Node
) -> None:
    token = mint(tmp_path, "alice")
    answer = handshake(
        debug_node.address, {"Sec-WebSocket-Protocol": f"realtime.v1, bearer.{token} @"}
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    control = await ws_connect(debug_node.address, subprotocols=["realtime.v1", f"bearer.{token}"])
    assert (await ws_call(control, ECHO, {"control": 1}))["data"] == {"control": 1}
    await control.close()
    output = stopped_output(debug_node)
    assert "InvalidHeaderFormat: invalid Sec-WebSocket-Protocol header" in output  # traceback kept
    for secret in secrets_of(token):
        assert secret not in output
    assert "bearer.[redacted] @" in output


def test_every_logger_and_level_is_redacted_in_process(tmp_path: Path) -> None:
    """Any logger of the process (a library's, never configured), at DEBUG, with the
    token in arguments, a mapping of arguments, an exception's traceback and the message
    itself: the handler writes none of it."""
    build_app(make_settings(tmp_path))  # the app factory installs the redaction
    token = mint(tmp_path, "alice")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library = logging.getLogger("hostile.some.library")
    library.addHandler(handler)
    library.setLevel(logging.DEBUG)
    library.propagate = False
    try:
        library.debug("fetching %s", f"https://idp.example/x?%74oken={percent_encoded(token)}")
        library.info("headers %(authorization)s", {"authorization": f"Bearer  {token}"})
        library.warning(f"raw message with token={token}")
        try:
            raise ValueError(f"invalid header: bearer.{token} @")
        except ValueError:
            library.exception("handshake failed")
        library.error("control: nothing to hide")
    finally:
        library.removeHandler(handler)
    written = stream.getvalue()
    for secret in secrets_of(token):
        assert secret not in written
    assert "ValueError: invalid header: bearer.[redacted] @" in written
    assert "ERROR control: nothing to hide" in written

"""picows as a server, the practical limit: `python -m tests.bench.peers.picows_server --port P`.

Not ASGI and not uvicorn: picows's own HTTP upgrade and frame parser (Cython) on uvloop,
one `WSListener` per socket whose `on_ws_frame` is called for each frame, no task or
coroutine per socket or message. `/echo/` answers each text frame with the envelope
tests.bench.bare answers (`orjson.loads`, `orjson.dumps`); `/ws/` keeps every
subscriber's transport in a set and writes each publication (a frame from
`/ws/?pub=1`), serialized once, to each of them; `GET /health` answers `ok` (a plain
response of the listener factory, no upgrade). Stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from tests.bench.common.runner import run


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            request = orjson.loads(frame.get_payload_as_bytes())
            answer = {
                "pkg_id": request.get("pkg_id"),
                "req_id": request.get("req_id"),
                "status_code": 0,
                "data": request.get("data", {}),
            }
            transport.send(WSMsgType.TEXT, orjson.dumps(answer))
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Fanout(WSListener):
    def __init__(self, subscribers: set[WSTransport], publisher: bool) -> None:
        super().__init__()
        self.subscribers = subscribers
        self.publisher = publisher

    def on_ws_connected(self, transport: WSTransport) -> None:
        if not self.publisher:
            self.subscribers.add(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.TEXT:
            request = orjson.loads(frame.get_payload_as_bytes())
            event = {"event": "message", "topic": request["topic"], "data": request["data"]}
            message = orjson.dumps(event)
            for subscriber in list(self.subscribers):
                subscriber.send(WSMsgType.TEXT, message)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.subscribers.discard(transport)


async def serve(port: int) -> None:
    subscribers: set[WSTransport] = set()

    def route(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
        path, _, query = request.path.partition(b"?")
        if path == b"/health":
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        if path == b"/echo/":
            return Echo()
        if path == b"/ws/":
            return Fanout(subscribers, b"pub=1" in query)
        return None  # 404

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):  # even where SIGINT was ignored
        loop.add_signal_handler(signal_number, stop.set)
    server = await ws_create_server(route, "127.0.0.1", port)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.peers.picows_server")
    parser.add_argument("--port", type=int, required=True)
    run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

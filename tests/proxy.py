"""A TCP proxy in front of the real PostgreSQL or Redis, so a test can cut a service off
and bring it back without touching the shared server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379}


def address_of(url: str) -> tuple[str, int]:
    """The host and port a service URL names (the scheme's default port when absent)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[scheme]


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.up = True
        # cleared while black-holed: nothing is forwarded, nothing refused
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # listening now: a client may connect before the proxy's thread starts serving
        sock.listen(128)
        self._sock = sock

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self._flowing.wait()  # held, not lost: TCP would retransmit it
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        self._writers.add(writer)
        await self._flowing.wait()  # black-holed: the handshake got no answer
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def _cut(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        """Drop every connection and refuse new ones (the database is 'down')."""
        self.loop.call_soon_threadsafe(self._cut)

    def hole(self) -> None:
        """Black-hole the service: connections are accepted and kept, and nothing goes
        through in either direction (packets dropped, not refused) until `restore()`."""
        self.loop.call_soon_threadsafe(self._flowing.clear)

    def restore(self) -> None:
        self.up = True
        self.loop.call_soon_threadsafe(self._flowing.set)

    def url(self, service_url: str) -> str:
        """`service_url` with its host and port replaced by this proxy's (user, password,
        database and query kept)."""
        parts = urlsplit(service_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@" if credentials else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}"))

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, sock=self._sock))
        self.loop.run_forever()
        server.close()
        # end the connection tasks still piping before the loop goes (no "Task was
        # destroyed but it is pending" at exit)
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


@contextlib.contextmanager
def running_proxy(service_url: str) -> Iterator[Proxy]:
    """A proxy to the host and port of `service_url`; reach it at `proxy.url(service_url)`."""
    proxy = Proxy(*address_of(service_url))
    thread = threading.Thread(target=proxy.run, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.loop.call_soon_threadsafe(proxy._cut)
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
        thread.join(5)

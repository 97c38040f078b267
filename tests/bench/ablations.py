"""Diagnostic ablations: switch one piece of the full stack off, in the bench server only.

    python -m tests.bench --ablate no-metrics,no-deadline,no-send-timeout

Each ablation monkeypatches realtime in the server process (the runner passes the list in
`BENCH_ABLATE`), so the gain in requests/s over an unpatched run shows what that piece
costs. They change behaviour (no metrics, no deadlines): numbers to find where the time
goes, never a configuration to ship. realtime/ itself is not modified.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import types
from collections.abc import Callable, Coroutine
from typing import Any

ENV = "BENCH_ABLATE"


class _NoTimeout:
    """Stands in for `asyncio.timeout(...)`: enters and exits, never expires."""

    async def __aenter__(self) -> _NoTimeout:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def expired(self) -> bool:
        return False

    def reschedule(self, when: float | None) -> None:
        pass

    def when(self) -> float | None:
        return None


class _AsyncioWithoutTimeout(types.ModuleType):
    """The asyncio module as one realtime module sees it, minus `timeout`."""

    def __init__(self) -> None:
        super().__init__("asyncio")

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def timeout(delay: float | None) -> _NoTimeout:
        return _NoTimeout()


def _no_metrics() -> None:
    """Router.call without its metrics (counter + histogram) and its try/except."""
    from realtime.router import Router

    async def call(self: Router, ctx: Any, data: Any, transport: str) -> Any:
        return await self._call(ctx, data)

    Router.call = call  # type: ignore[method-assign]


def _no_deadline() -> None:
    """Router._call without the handler deadline (`asyncio.timeout` per request)."""
    import realtime.router

    realtime.router.asyncio = _AsyncioWithoutTimeout()  # type: ignore[assignment]


def _no_send_timeout() -> None:
    """Connection._write_loop without its `asyncio.timeout` around every send."""
    import realtime.connection

    realtime.connection.asyncio = _AsyncioWithoutTimeout()  # type: ignore[assignment]


class Suspended(Exception):
    """A diagnostic that needs a coroutine to finish synchronously saw it suspend."""


def _run_now(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Drive a coroutine that never suspends to its end, synchronously (no task)."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise Suspended("ablation: the coroutine suspended; this diagnostic cannot handle it")


def _inline_handlers() -> None:
    """Connection.spawn runs the request in the reader, without a task per request.

    Only valid for handlers that never suspend (echo): it is what an eager task factory
    (Python 3.12+) would do for them.
    """
    from realtime.connection import Connection

    def spawn(self: Connection, package: Any, request: Any) -> None:
        self._invalid_frames = 0
        _run_now(self._handle(package, request))

    Connection.spawn = spawn  # type: ignore[method-assign]


def _direct_send() -> None:
    """Connection.enqueue sends at once when nothing is queued, skipping the writer task.

    Only valid while uvicorn's send completes without suspending (transport not paused).
    """
    from realtime.connection import Connection, State

    enqueue = Connection.enqueue

    def direct(self: Connection, message: bytes) -> None:
        if self.state is State.OPEN and self._queue.empty():
            send = self.websocket.send({"type": "websocket.send", "text": message.decode()})
            with contextlib.suppress(OSError, RuntimeError):  # the peer is gone
                _run_now(send)
            return
        enqueue(self, message)

    Connection.enqueue = direct  # type: ignore[method-assign]


def _lazy_gc() -> None:
    """Collect the youngest generation every 50,000 allocations instead of every 700.

    Affects the whole server process, so the bare ceiling too.
    """
    gc.set_threshold(50_000, 20, 20)


ABLATIONS: dict[str, Callable[[], None]] = {
    "no-metrics": _no_metrics,
    "no-deadline": _no_deadline,
    "no-send-timeout": _no_send_timeout,
    "inline-handlers": _inline_handlers,
    "direct-send": _direct_send,
    "lazy-gc": _lazy_gc,
}


def parse(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; known: {sorted(ABLATIONS)}")
    return names


def apply(value: str) -> list[str]:
    names = parse(value)
    for name in names:
        ABLATIONS[name]()
    return names

"""Diagnostic ablations: switch one piece of the full stack off, in the bench server only.

    python -m tests.bench --ablate bare-frame

The runner passes the list in `BENCH_ABLATE`; `tests.bench.app.create_bench_app` builds the
server with it, so the gain in requests/s over a run without shows what that piece costs.
Nothing here patches realtime's globals:

- a *frame* ablation (`bare-frame`, `no-router`; at most one) is a frame handler
  `(connection, text) -> None` given to `create_app(..., on_frame=...)`, the app's seam
  for what a `/ws` frame means. It answers through the same Connection (reader, writer,
  `Connection.enqueue`), whose signature is checked when the app is built: if it changes
  the server fails at start, it does not silently measure something else;
- a *process* ablation (`lazy-gc`) changes a setting of the server process.

They change behaviour: numbers to find where the time goes, never a configuration to ship.
(The ablations of the first measurements, no-metrics, no-deadline, no-send-timeout,
inline-handlers and direct-send, were removed once realtime itself did what they measured;
see commit feb5b01 for them.)
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from realtime.protocol import encode_ok, parse_request

ENV = "BENCH_ABLATE"
FrameHandler = Callable[[Any, str], None]


def _lazy_gc() -> None:
    """Collect the youngest generation every 50,000 allocations instead of every 700.

    Affects the whole server process, so the bare ceiling too.
    """
    gc.set_threshold(50_000, 20, 20)


def bare_frame(connection: Any, text: str) -> None:
    """`bare-frame`: `/ws` frames answered like the bare loop does (orjson in, orjson out),
    through the same Connection (reader, writer): what the package path costs, and what
    the connection machinery alone costs."""
    request = orjson.loads(text)
    answer = {
        "pkg_id": request.get("pkg_id"),
        "req_id": request.get("req_id"),
        "status_code": 0,
        "data": request.get("data", {}),
    }
    connection.enqueue(orjson.dumps(answer), direct=False)  # as answers are


def routerless(packages: Sequence[Any]) -> FrameHandler:
    """`no-router`: `/ws` frames parsed as usual and looked up in a dict of the app's
    packages, then the handler called directly and the answer encoded as usual: no
    Context, no roles, rate limit, validator or metrics. What the dispatcher's admission
    and bookkeeping cost per request."""
    by_id = {package.id: package for package in packages}

    def routerless_frame(connection: Any, text: str) -> None:
        pkg_id, req_id, data = parse_request(text)
        package = by_id[pkg_id]
        answer = encode_ok(package.id, req_id, package.handler(None, data))
        connection.enqueue(answer, direct=False)

    return routerless_frame


FRAMES: dict[str, Callable[[Sequence[Any]], FrameHandler]] = {
    "bare-frame": lambda packages: bare_frame,
    "no-router": routerless,
}
PROCESS: dict[str, Callable[[], None]] = {"lazy-gc": _lazy_gc}
ABLATIONS = (*FRAMES, *PROCESS)


def parse(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablations {unknown}; known: {sorted(ABLATIONS)}")
    frames = [name for name in names if name in FRAMES]
    if len(frames) > 1:
        raise ValueError(f"at most one frame ablation at a time, not {frames}")
    return names


def apply(value: str, packages: Sequence[Any]) -> FrameHandler | None:
    """Apply the process ablations of `value`; the frame handler to build the app with
    (None: realtime's own); `packages` are the app's (what `no-router` looks up)."""
    names = parse(value)
    for name in names:
        if name in PROCESS:
            PROCESS[name]()
    frames = [FRAMES[name] for name in names if name in FRAMES]
    if not frames:
        return None
    _check_connection_api()
    return frames[0](packages)


def _check_connection_api() -> None:
    """The frame handlers answer with `Connection.enqueue(message, direct=False)`: fail
    at start, naming it, if that API changed."""
    from realtime.socket.connection import Connection

    enqueue = getattr(Connection, "enqueue", None)
    if enqueue is None or "direct" not in inspect.signature(enqueue).parameters:
        raise RuntimeError(
            "tests/bench/ablations.py: realtime.socket.connection.Connection.enqueue"
            "(message, direct=...) is gone; update the frame ablations to its new API"
        )

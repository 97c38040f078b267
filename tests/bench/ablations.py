"""Diagnostic ablations: switch one piece of the full stack off, in the bench server only.

    python -m tests.bench --ablate bare-frame

Each ablation monkeypatches realtime in the server process (the runner passes the list in
`BENCH_ABLATE`), so the gain in requests/s over an unpatched run shows what that piece
costs. They change behaviour: numbers to find where the time goes, never a configuration
to ship. realtime/ itself is not modified. (The ablations of the first measurements,
no-metrics, no-deadline, no-send-timeout, inline-handlers and direct-send, were removed
once realtime itself did what they measured; see commit feb5b01 for them.)
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

ENV = "BENCH_ABLATE"


def _lazy_gc() -> None:
    """Collect the youngest generation every 50,000 allocations instead of every 700.

    Affects the whole server process, so the bare ceiling too.
    """
    gc.set_threshold(50_000, 20, 20)


def _bare_frame() -> None:
    """`/ws` frames answered like the bare loop does (orjson in, orjson out), through the
    same Connection (reader, writer): what the package path costs, and what the connection
    machinery alone costs."""
    import orjson

    import realtime.app

    def bare_frame(connection: Any, text: str) -> None:
        request = orjson.loads(text)
        answer = {
            "pkg_id": request.get("pkg_id"),
            "req_id": request.get("req_id"),
            "status_code": 0,
            "data": request.get("data", {}),
        }
        connection.enqueue(orjson.dumps(answer), direct=False)  # as answers are

    realtime.app.package_frame = bare_frame  # type: ignore[assignment]


def _no_router() -> None:
    """`/ws` frames parsed and looked up as usual, then the handler called directly and
    the answer encoded as usual: no Context, no roles, rate limit, validator or metrics.
    What the router's admission and bookkeeping cost per request."""
    import realtime.app
    from realtime.protocol import encode_ok, parse_request

    def routerless_frame(connection: Any, text: str) -> None:
        pkg_id, req_id, data = parse_request(text)
        package = connection.services.catalog.get(pkg_id)
        answer = encode_ok(package.id, req_id, package.handler(None, data))
        connection.enqueue(answer, direct=False)

    realtime.app.package_frame = routerless_frame  # type: ignore[assignment]


ABLATIONS: dict[str, Callable[[], None]] = {
    "bare-frame": _bare_frame,
    "no-router": _no_router,
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

"""Benchmark scenarios: each turns the running server into a `Workload` for the load generator.

Add a scenario by writing a function `(Target) -> Workload` and registering it in
`SCENARIOS`; `python -m tests.bench --scenarios NAME,...` runs it. Scenarios that do not
fit request/answer (fan-out, job progress) can reuse `Target`, `report` and the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.bench.app import BARE_PATH, FULL_PATH
from tests.bench.loadgen import Workload, envelope, payload_of, status_ok

ECHO_PKG_ID = 40


@dataclass(frozen=True)
class Target:
    """The server under test and what a scenario needs to talk to it."""

    host: str
    port: int
    token: str
    payload_bytes: int

    def url(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def bare(target: Target) -> Workload:
    """(a) The ceiling: bare Starlette WebSocket + orjson, same envelope, no realtime code."""
    return Workload(
        name="bare",
        url=target.url(BARE_PATH),
        make_request=envelope(ECHO_PKG_ID, payload_of(target.payload_bytes)),
        check=status_ok,
    )


def echo(target: Target) -> Workload:
    """(b) The `echo` package through the full stack on an authenticated /ws."""
    return Workload(
        name="echo",
        url=target.url(FULL_PATH),
        make_request=envelope(ECHO_PKG_ID, payload_of(target.payload_bytes)),
        check=lambda answer: status_ok(answer) and answer.get("pkg_id") == ECHO_PKG_ID,
        headers=target.auth,
    )


SCENARIOS: dict[str, Callable[[Target], Workload]] = {"bare": bare, "echo": echo}

# (numerator, denominator, target) ratios of requests/s printed after the tables
RATIOS: list[tuple[str, str, float | None]] = [("echo", "bare", 0.8)]

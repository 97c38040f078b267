"""The figures of a request/answer run (tests.bench, the socket runs of tests.bench.projects)
and their tables: `RunResult` holds one run (counts, latencies, CPU) and derives its
figures; `runs_table` / `summary_table` print them, `ratio` / `ratio_line` the ratio of a
scenario to its baseline, `to_json` keeps the raw figures. The statistics and the table
layout are tests.bench.common.figures'; the probes tests.bench.common.probes'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.bench.common import figures
from tests.bench.common.figures import Column, maximum, num, pct, percentile, probe_column, two

SERVER_CPU = "server CPU"  # the probe name of the server process's CPU share


@dataclass
class RunResult:
    """One measured run of one scenario."""

    scenario: str
    round: int
    connections: int
    pipeline: int
    duration: float  # seconds of the measurement window
    completed: int  # answers received in the window
    errors: int  # answers in the window with a non-zero status or an unexpected shape
    failed_connections: int
    client_cpu: float  # share of one core used by the load generator in the window
    probes: dict[str, float] = field(default_factory=dict)  # e.g. "server CPU": 0.97
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latencies_ms.sort()

    @property
    def rps(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    def latency(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def server_us_per_request(self) -> float:
        """Server CPU time per answered request, in microseconds (nan without the probe).

        Unlike requests/s it does not move when another process takes the server's core
        for a while, so it is the steadier figure on a shared machine.
        """
        share = self.probes.get(SERVER_CPU)
        if share is None or not self.completed:
            return float("nan")
        return share * self.duration / self.completed * 1e6

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies_ms"]
        data |= {
            "rps": self.rps,
            "p50_ms": self.latency(50),
            "p90_ms": self.latency(90),
            "p99_ms": self.latency(99),
            "max_ms": self.latency(100),
            "server_us_per_request": self.server_us_per_request,
        }
        return data


def columns(probes: Sequence[str]) -> list[Column[RunResult]]:
    """The tables' columns after the scenario and its round(s); `probes` names the
    probes' columns (shares of one core)."""
    return [
        Column("req/s", lambda r: r.rps),
        Column("p50 ms", lambda r: r.latency(50), two),
        Column("p90 ms", lambda r: r.latency(90), two),
        Column("p99 ms", lambda r: r.latency(99), two),
        Column("max ms", lambda r: r.latency(100), two, maximum),
        Column("errors", lambda r: r.errors + r.failed_connections, str, sum),
        Column("client CPU", lambda r: r.client_cpu, pct),
        Column("server us/req", lambda r: r.server_us_per_request, lambda v: num(v, 1)),
        *map(probe_column, probes),
    ]


def runs_table(results: Sequence[RunResult]) -> str:
    """One row per run."""
    names = figures.probe_names(results)
    return figures.runs_table(results, "scenario", lambda r: r.scenario, columns(names))


def summary_table(results: Sequence[RunResult]) -> str:
    """Per scenario: the median over rounds of each figure (max: the largest)."""
    names = figures.probe_names(results)
    return figures.medians_table(results, "scenario", lambda r: r.scenario, columns(names))


def ratio(results: Sequence[RunResult], numerator: str, denominator: str) -> dict[str, Any]:
    """`numerator` against `denominator`, of the medians and round by round.

    `ratio` is of requests/s (the budget's figure); `cpu_ratio` is the inverse ratio of
    server CPU per request: what the requests/s ratio would be on a core of its own.
    """
    return figures.ratio(
        results,
        numerator,
        denominator,
        name=lambda r: r.scenario,
        higher=lambda r: r.rps,
        lower={"cpu": lambda r: r.server_us_per_request},
    )


def ratio_line(info: dict[str, Any], target: float | None = None) -> str:
    if not info:
        return "ratio: not available (a scenario is missing)"
    name = f"{info['numerator']}/{info['denominator']}"

    def rounds(key: str) -> str:
        return ", ".join(f"{v:.3f}" for _, v in sorted(info[key].items()))

    line = (
        f"ratio {name} of requests/s (medians): {info['ratio']:.3f}"
        f"   per round: {rounds('per_round')}"
    )
    if target is not None:
        verdict = "meets" if info["ratio"] >= target else "BELOW"
        line += f"   target >= {target}: {verdict}"
    return (
        f"{line}\nratio {name} of server CPU per request (inverse, medians): "
        f"{info['cpu_ratio']:.3f}   per round: {rounds('cpu_per_round')}"
    )


def to_json(results: Sequence[RunResult], **extra: Any) -> dict[str, Any]:
    return {"runs": [r.summary() for r in results], **extra}

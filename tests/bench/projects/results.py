"""One row per run (socket runs from `loadgen`, HTTP runs from wrk), their tables, the
ratios against the baseline and the ceilings (statistics and layout:
tests.bench.common.figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.bench.common import figures
from tests.bench.common.figures import Column, group, maximum, median, pct, probe_column, two
from tests.bench.projects.http_load import WrkResult
from tests.bench.report import RunResult

SERVER_CPU = "server CPU"
POSTGRES_CPU = "postgres CPU"


@dataclass
class Row:
    scenario: str
    round: int
    in_flight: str  # e.g. "16x4" (sockets x pipeline) or "64" (HTTP connections)
    duration: float
    completed: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float
    probes: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    def us_per_request(self, probe: str) -> float:
        share = self.probes.get(probe)
        if share is None or not self.completed:
            return float("nan")
        return share * self.duration / self.completed * 1e6

    def summary(self) -> dict[str, Any]:
        return asdict(self) | {
            "rps": self.rps,
            "server_us_per_request": self.us_per_request(SERVER_CPU),
            "postgres_us_per_request": self.us_per_request(POSTGRES_CPU),
        }

    @classmethod
    def from_socket(cls, result: RunResult) -> Row:
        return cls(
            scenario=result.scenario,
            round=result.round,
            in_flight=f"{result.connections}x{result.pipeline}",
            duration=result.duration,
            completed=result.completed,
            errors=result.errors + result.failed_connections,
            p50_ms=result.latency(50),
            p90_ms=result.latency(90),
            p99_ms=result.latency(99),
            max_ms=result.latency(100),
            client_cpu=result.client_cpu,
            probes=dict(result.probes),
        )

    @classmethod
    def from_wrk(
        cls,
        scenario: str,
        round_: int,
        connections: int,
        result: WrkResult,
        probes: dict[str, float],
    ) -> Row:
        return cls(
            scenario=scenario,
            round=round_,
            in_flight=str(connections),
            duration=result.duration,
            completed=result.requests,
            errors=result.errors,
            p50_ms=result.p50_ms,
            p90_ms=result.p90_ms,
            p99_ms=result.p99_ms,
            max_ms=result.max_ms,
            client_cpu=result.client_cpu,
            probes=probes,
        )


def columns(probes: Sequence[str]) -> list[Column[Row]]:
    """The tables' columns after the scenario and its round(s)."""
    return [
        Column("in flight", lambda r: r.in_flight, str, lambda values: values[0]),
        Column("req/s", lambda r: r.rps),
        Column("p50 ms", lambda r: r.p50_ms, two),
        Column("p90 ms", lambda r: r.p90_ms, two),
        Column("p99 ms", lambda r: r.p99_ms, two),
        Column("max ms", lambda r: r.max_ms, two, maximum),
        Column("errors", lambda r: r.errors, str, sum),
        Column("server us/req", lambda r: r.us_per_request(SERVER_CPU)),
        Column("postgres us/req", lambda r: r.us_per_request(POSTGRES_CPU)),
        Column("client CPU", lambda r: r.client_cpu, pct),
        *map(probe_column, probes),
    ]


def runs_table(rows: Sequence[Row]) -> str:
    names = figures.probe_names(rows)
    return figures.runs_table(rows, "scenario", lambda r: r.scenario, columns(names))


def summary_table(rows: Sequence[Row]) -> str:
    """Per scenario, the median over rounds of every figure (max: the largest)."""
    names = figures.probe_names(rows)
    return figures.medians_table(rows, "scenario", lambda r: r.scenario, columns(names))


def ratio(rows: Sequence[Row], numerator: str, denominator: str) -> dict[str, Any]:
    """Requests/s of `numerator` over `denominator` (medians, and round by round), and the
    inverse ratios of server CPU per request (what the first would be were the server's
    CPU the only limit) and of the p99."""
    return figures.ratio(
        rows,
        numerator,
        denominator,
        name=lambda row: row.scenario,
        higher=lambda row: row.rps,
        lower={"cpu": lambda row: row.us_per_request(SERVER_CPU), "p99": lambda row: row.p99_ms},
    )


def ratio_line(info: dict[str, Any], target: float) -> str:
    if not info:
        return "ratio: not available (a scenario is missing)"
    verdict = "meets" if info["ratio"] >= target else "BELOW"
    rounds = ", ".join(f"{v:.2f}" for _, v in sorted(info["per_round"].items()))
    return (
        f"{info['numerator']} / {info['denominator']}: requests/s x{info['ratio']:.2f} "
        f"(per round {rounds}; target >= {target:g}: {verdict}); "
        f"server CPU per request x{info['cpu_ratio']:.2f} less; "
        f"p99 x{info['p99_ratio']:.2f} lower"
    )


def _per_core(us_per_request: float) -> float:
    return 1e6 / us_per_request if us_per_request == us_per_request and us_per_request else 0.0


def ceilings(rows: Sequence[Row]) -> str:
    """Per scenario, the requests/s one whole core would allow the server (1e6 / server
    us/req) and the database's backends (1e6 / postgres us/req): the two ceilings."""
    lines = []
    for scenario, runs in group(rows, lambda row: row.scenario).items():
        server = median(r.us_per_request(SERVER_CPU) for r in runs)
        database = median(r.us_per_request(POSTGRES_CPU) for r in runs)
        lines.append(
            f"{scenario}: one core of its own would let the server answer "
            f"~{_per_core(server):,.0f} req/s, the database ~{_per_core(database):,.0f} req/s"
        )
    return "\n".join(lines)

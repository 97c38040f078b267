"""One row per run (socket runs from `loadgen`, HTTP runs from wrk), tables and ratios."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.0f}%"


def _num(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, right-aligned."""
    rows = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


HEADER = (
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "errors",
    "server us/req",
    "postgres us/req",
    "client CPU",
)


def _probe_names(rows: Sequence[Row]) -> list[str]:
    return list(rows[0].probes) if rows else []


def runs_table(rows: Sequence[Row], probes: Sequence[str] | None = None) -> str:
    names = _probe_names(rows) if probes is None else list(probes)
    body = [
        [
            r.scenario,
            str(r.round),
            r.in_flight,
            _num(r.rps),
            _num(r.p50_ms, 2),
            _num(r.p90_ms, 2),
            _num(r.p99_ms, 2),
            _num(r.max_ms, 2),
            str(r.errors),
            _num(r.us_per_request(SERVER_CPU), 0),
            _num(r.us_per_request(POSTGRES_CPU), 0),
            _pct(r.client_cpu),
            *(_pct(r.probes.get(n, float("nan"))) for n in names),
        ]
        for r in rows
    ]
    return table(("scenario", "round", "in flight", *HEADER, *names), body)


def by_scenario(rows: Sequence[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.scenario, []).append(row)
    return grouped


def summary_table(rows: Sequence[Row]) -> str:
    """Per scenario, the median over rounds of every figure (max: the largest)."""
    names = _probe_names(rows)
    body = []
    for scenario, runs in by_scenario(rows).items():

        def med(values: Iterable[float]) -> float:
            return statistics.median(values)

        body.append(
            [
                scenario,
                str(len(runs)),
                runs[0].in_flight,
                _num(med(r.rps for r in runs)),
                _num(med(r.p50_ms for r in runs), 2),
                _num(med(r.p90_ms for r in runs), 2),
                _num(med(r.p99_ms for r in runs), 2),
                _num(max(r.max_ms for r in runs), 2),
                str(sum(r.errors for r in runs)),
                _num(med(r.us_per_request(SERVER_CPU) for r in runs), 0),
                _num(med(r.us_per_request(POSTGRES_CPU) for r in runs), 0),
                _pct(med(r.client_cpu for r in runs)),
                *(_pct(med(r.probes.get(n, float("nan")) for r in runs)) for n in names),
            ]
        )
    return table(("scenario", "rounds", "in flight", *HEADER, *names), body)


def _safe(top: float, bottom: float) -> float:
    return top / bottom if bottom and bottom == bottom else float("nan")


def ratio(rows: Sequence[Row], numerator: str, denominator: str) -> dict[str, Any]:
    """Requests/s of `numerator` over `denominator` (medians, and round by round), and the
    inverse ratio of server CPU per request (what the first would be were the server's
    CPU the only limit)."""
    grouped = by_scenario(rows)
    top, bottom = grouped.get(numerator, []), grouped.get(denominator, [])
    if not top or not bottom:
        return {}
    pairs = [(b, t) for b in bottom for t in top if b.round == t.round]
    return {
        "numerator": numerator,
        "denominator": denominator,
        "ratio": _safe(
            statistics.median(r.rps for r in top), statistics.median(r.rps for r in bottom)
        ),
        "per_round": [_safe(t.rps, b.rps) for b, t in pairs],
        "cpu_ratio": _safe(
            statistics.median(r.us_per_request(SERVER_CPU) for r in bottom),
            statistics.median(r.us_per_request(SERVER_CPU) for r in top),
        ),
        "p99_ratio": _safe(
            statistics.median(r.p99_ms for r in bottom), statistics.median(r.p99_ms for r in top)
        ),
    }


def ratio_line(info: dict[str, Any], target: float) -> str:
    if not info:
        return "ratio: not available (a scenario is missing)"
    verdict = "meets" if info["ratio"] >= target else "BELOW"
    rounds = ", ".join(f"{v:.2f}" for v in info["per_round"])
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
    for scenario, runs in by_scenario(rows).items():
        server = statistics.median(r.us_per_request(SERVER_CPU) for r in runs)
        database = statistics.median(r.us_per_request(POSTGRES_CPU) for r in runs)
        lines.append(
            f"{scenario}: one core of its own would let the server answer "
            f"~{_per_core(server):,.0f} req/s, the database ~{_per_core(database):,.0f} req/s"
        )
    return "\n".join(lines)

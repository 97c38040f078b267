"""What `python -m tests.bench.compare` prints: a table per run as it comes (`runs_table`),
then over the rounds the figures of every system side by side (`figures_table`), each
as a ratio to bare Starlette of the same run (`ratios_table`), the machine's noise
beside them (`noise_table`), and what went wrong (`checks`). The statistics and the
layout are tests/bench/common/figures.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tests.bench import report
from tests.bench.common import figures
from tests.bench.common.figures import (
    Column,
    maximum,
    median,
    num,
    pct,
    probe_column,
    table,
    two,
)
from tests.bench.compare.systems import ECHO, FANOUT, IDLE, System
from tests.bench.fanout.runs import Result as FanoutResult
from tests.bench.idle import runs as idle
from tests.bench.report import SERVER_CPU, RunResult

BASELINE = "bare"
NOISE = ("steal", "others", "others peak")
Result = RunResult | FanoutResult | idle.IdleRun


@dataclass
class Run:
    """One measured run: `figure` is what ran ("echo 10x16", "fanout", "idle")."""

    figure: str
    system: str
    round: int
    result: Result | None  # None: the run failed
    error: str = ""

    @property
    def kind(self) -> str:
        return self.figure.split()[0]

    def probe(self, name: str) -> float:
        return self.result.probes.get(name, math.nan) if self.result is not None else math.nan

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if isinstance(self.result, idle.IdleRun):
            found = asdict(self.result) | {"kib_per_socket": self.result.kib_per_socket}
        elif self.result is not None:
            found = self.result.summary()
        head = {"figure": self.figure, "system": self.system, "round": self.round}
        return head | {"error": self.error, "result": found}


# -- one run as it comes -----------------------------------------------------------------


def _of(column: Column[Any]) -> Column[Run]:
    """A column of a result, read from a Run."""
    return Column(column.header, lambda r: column.value(r.result), column.show)


def _fanout_checks(r: FanoutResult) -> str:
    counts = f"{r.lost}/{r.skipped}/{r.disorder}/{r.errors + r.failed}"
    return counts + (" STALLED" if r.stalled else "")


FANOUT_COLUMNS: list[Column[FanoutResult]] = [
    Column("subs", lambda r: r.subscribers, str),
    Column("pubs/s", lambda r: r.publications_per_s),
    Column("deliveries/s", lambda r: r.deliveries_per_s),
    Column("p50 ms", lambda r: r.latency(50), two),
    Column("p99 ms", lambda r: r.latency(99), two),
    Column("undelivered/skipped/disorder/errors", _fanout_checks, str),
    Column("client CPU", lambda r: r.client_cpu, pct),
    Column("server us/delivery", lambda r: r.server_us_per_delivery(SERVER_CPU), two),
]


def _columns(run: Run) -> list[Column[Run]]:
    assert run.result is not None
    probes = [_of(probe_column(name)) for name in run.result.probes]
    if run.kind == ECHO:
        return [_of(c) for c in report.columns([])] + probes
    if run.kind == FANOUT:
        return [_of(c) for c in FANOUT_COLUMNS] + probes
    return [_of(c) for c in idle.COLUMNS] + probes


def runs_table(runs: Sequence[Run]) -> str:
    """The runs of one figure, a row each (a failed run: its error)."""
    if runs[0].result is None:
        rows = [[f"{r.figure} {r.system}", str(r.round), r.error] for r in runs]
        return table(("FAILED", "round", "error"), rows)
    return figures.runs_table(runs, runs[0].figure, lambda r: r.system, _columns(runs[0]))


# -- over the rounds -------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A row of the side-by-side tables: read from the runs of `figure`."""

    label: str
    figure: str
    value: Callable[[Any], float]  # of a run's result
    show: Callable[[float], str] = num
    lower: bool = False  # lower is better (CPU per message, latency, memory)

    @property
    def kind(self) -> str:
        return self.figure.split()[0]


def _micro(q: float) -> Callable[[Any], float]:
    return lambda r: 1000 * r.latency(q)


def rows(loads: Sequence[tuple[int, int]], subscribers: int, sockets: int) -> list[Figure]:
    """The issue's table: echo at each load (connections, in flight), fan-out, idle."""
    found: list[Figure] = []
    for n, (connections, pipeline) in enumerate(loads):
        name = f"echo {connections}x{pipeline}"
        label = f"echo req/s, {connections} conn{'s' if connections != 1 else ''} x {pipeline}"
        found.append(Figure(f"{label} in flight", name, _rps))
        if n == 0:
            label = f"echo server µs per request, {connections} x {pipeline}"
            found.append(Figure(label, name, _us_per_request, _one, True))
        if connections == 1:
            for q in (50, 99):
                label = f"echo p{q} µs, 1 conn x {pipeline}"
                found.append(Figure(label, name, _micro(q), lower=True))
    return [
        *found,
        Figure(f"fan-out deliveries/s, {subscribers:,} subscribers", FANOUT, _deliveries),
        Figure("fan-out server µs per delivery", FANOUT, _us_per_delivery, _one, True),
        Figure(f"KiB per idle socket ({sockets:,} sockets)", IDLE, _kib, _one, True),
        Figure("RSS before any socket (MiB)", IDLE, _rss_before, _one, True),
    ]


def _rps(r: RunResult) -> float:
    return r.rps


def _us_per_request(r: RunResult) -> float:
    return r.server_us_per_request


def _deliveries(r: FanoutResult) -> float:
    return r.deliveries_per_s


def _us_per_delivery(r: FanoutResult) -> float:
    return r.server_us_per_delivery(SERVER_CPU)


def _kib(r: idle.IdleRun) -> float:
    return r.kib_per_socket


def _rss_before(r: idle.IdleRun) -> float:
    return r.before["rss_mib"]


def _one(value: float) -> str:
    return num(value, 1)


def _done(runs: Sequence[Run], figure: str, system: str) -> list[Run]:
    return [r for r in runs if r.figure == figure and r.system == system and r.result is not None]


def medians(runs: Sequence[Run], figure: Figure, system: str) -> float:
    return median(figure.value(r.result) for r in _done(runs, figure.figure, system))


def ratio(runs: Sequence[Run], figure: Figure, system: str) -> dict[str, Any]:
    """The system's median over bare Starlette's, and round by round (empty: missing)."""
    done = _done(runs, figure.figure, system) + _done(runs, figure.figure, BASELINE)
    return figures.ratio(
        done, system, BASELINE, name=lambda r: r.system, higher=lambda r: figure.value(r.result)
    )


def figures_table(runs: Sequence[Run], rows_: Sequence[Figure], systems: Sequence[System]) -> str:
    """A row per figure, a column per system: the median over the rounds (n/a: the
    system has no such figure; `-`: it did not run, or every run of it failed)."""

    def cell(figure: Figure, system: System) -> str:
        if not system.has(figure.kind):
            return "n/a"
        return figure.show(medians(runs, figure, system.name))

    body = [[f.label, *(cell(f, s) for s in systems)] for f in rows_]
    return table(("figure (median over rounds)", *(s.name for s in systems)), body)


def _ratio_text(info: dict[str, Any]) -> str:
    if not info or math.isnan(info["ratio"]):
        return "-"
    rounds = [v for v in info["per_round"].values() if not math.isnan(v)]
    spread = f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else ""
    return f"{info['ratio']:.2f}{spread}"


def ratios_table(runs: Sequence[Run], rows_: Sequence[Figure], systems: Sequence[System]) -> str:
    """The same rows as ratios to bare Starlette's median of the same run, with the
    spread of the per-round ratios (each round's runs paired)."""

    def cell(figure: Figure, system: System) -> str:
        if not system.has(figure.kind):
            return "n/a"
        return _ratio_text(ratio(runs, figure, system.name))

    body = [
        [f.label + (" (lower is better)" if f.lower else ""), *(cell(f, s) for s in systems)]
        for f in rows_
    ]
    return table((f"x {BASELINE} (per round: min-max)", *(s.name for s in systems)), body)


def _noise_text(runs: Sequence[Run]) -> str:
    if not runs:
        return "-"
    worst = [maximum(r.probe(name) for r in runs) for name in NOISE]
    return "/".join("-" if math.isnan(v) else f"{100 * v:.0f}" for v in worst)


def noise_table(runs: Sequence[Run], names: Sequence[str], systems: Sequence[System]) -> str:
    """Per figure run and system, the worst round's steal, other programs' mean CPU and
    their peak, in % (of the machine's time; of one core; of one core)."""
    body = []
    for figure in names:
        cells = []
        for system in systems:
            done = _done(runs, figure, system.name)
            cells.append(_noise_text(done) if system.has(figure.split()[0]) else "n/a")
        body.append([figure, *cells])
    return table(("noise: steal/others/peak %", *(s.name for s in systems)), body)


def checks(runs: Sequence[Run]) -> list[str]:
    """A line per run that failed, measured nothing, lost, skipped or refused anything."""
    lines = []
    for run in runs:
        where = f"{run.figure} {run.system} round {run.round}"
        result = run.result
        if result is None:
            lines.append(f"{where}: FAILED {run.error}")
        elif isinstance(result, RunResult) and not result.completed:
            lines.append(f"{where}: no answer in the measured window")
        elif isinstance(result, RunResult) and (result.errors or result.failed_connections):
            lines.append(
                f"{where}: {result.errors} bad or unmatched answers, "
                f"{result.failed_connections} sockets failed or dropped"
            )
        elif isinstance(result, FanoutResult) and not result.deliveries:
            lines.append(f"{where}: no delivery in the measured window (too short for it?)")
        elif isinstance(result, FanoutResult) and (
            result.lost or result.skipped or result.disorder or result.errors or result.failed
        ):
            lines.append(f"{where}: undelivered/skipped/disorder/errors {_fanout_checks(result)}")
        elif isinstance(result, FanoutResult) and result.stalled:
            lines.append(f"{where}: STALLED")
        elif isinstance(result, idle.IdleRun) and result.failed:
            lines.append(f"{where}: {result.failed} idle sockets failed")
    return lines

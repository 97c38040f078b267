"""Measurements and their presentation, shared by every benchmark scenario.

- `ProcessCPU` reads another process's CPU time from /proc/<pid>/stat;
- `SelfCPU` reads this process's (the load generator's) CPU time;
- `RunResult` holds one run (counts, latencies, CPU) and derives its figures;
- `print_runs` / `print_summary` print the tables; `to_json` keeps the raw figures.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER_CPU = "server CPU"  # the probe name of the server process's CPU share


class ProcessCPU:
    """CPU seconds (user + system) of another process over a window, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._started: tuple[float, float] | None = None

    def read(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as handle:
            stat = handle.read()
        # the command name (field 2) may hold spaces: split after its closing parenthesis
        fields = stat[stat.rindex(b")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / CLOCK_TICKS

    def start(self) -> None:
        self._started = (self.read(), time.perf_counter())

    def stop(self) -> float:
        """Share of one core used since `start()` (1.0 = one core busy all the time)."""
        assert self._started is not None
        cpu, wall = self._started
        return (self.read() - cpu) / max(time.perf_counter() - wall, 1e-9)


class SelfCPU(ProcessCPU):
    """The same for this process (the load generator), with `time.process_time`."""

    def __init__(self) -> None:
        super().__init__(os.getpid())

    def read(self) -> float:
        return time.process_time()


class CoreBusy:
    """Busy share of one CPU core (everything but idle and iowait), from /proc/stat.

    Unlike a process's own CPU time this includes the softirq time spent there on the
    loopback TCP traffic, so it shows whether the core is saturated.
    """

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self._started: tuple[int, int] | None = None

    def read(self) -> tuple[int, int]:
        prefix = f"cpu{self.cpu} "
        with open("/proc/stat") as stat:
            line = next(line for line in stat if line.startswith(prefix))
        ticks = [int(v) for v in line.split()[1:]]
        idle = ticks[3] + ticks[4]
        total = sum(ticks[:8])  # guest time is already counted in user
        return total - idle, total

    def start(self) -> None:
        self._started = self.read()

    def stop(self) -> float:
        assert self._started is not None
        busy, total = self.read()
        busy0, total0 = self._started
        return (busy - busy0) / max(total - total0, 1)


class OthersPeak:
    """CPU used by processes other than the bench's own (its servers, this client, Redis)
    in the worst `span` seconds of the window, as a share of one core: a burst of some
    other program on the machine (on this VM the RabbitMQ tooling starts an Erlang VM about
    once a minute, ~110-145 ms of CPU in 150 ms) shows here. Sampled every 50 ms by a
    thread: all cores' user+system ticks from /proc/stat minus those of the known
    processes (so processes that start and end within the window count too)."""

    def __init__(self, pids: Sequence[int], span: float = 0.25) -> None:
        self.pids = [*pids, os.getpid(), *_pids_named(b"redis-server")]
        self.span = span
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, float]] = []  # (time, other CPU seconds so far)

    def _others(self) -> float:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        total = ticks[0] + ticks[1] + ticks[2]  # user, nice, system of all cores
        own = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                own += ProcessCPU(pid).read()
        return total / CLOCK_TICKS - own

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append((time.perf_counter(), self._others()))

    def start(self) -> None:
        self._samples = [(time.perf_counter(), self._others())]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        worst, first = 0.0, 0
        for last, (now, cpu) in enumerate(self._samples):
            while now - self._samples[first][0] > self.span and first < last:
                first += 1
            if now > self._samples[first][0]:
                worst = max(worst, (cpu - self._samples[first][1]) / self.span)
        return worst


def _pids_named(name: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm", "rb") as comm:
                if comm.read().strip() == name:
                    found.append(int(entry))
    return found


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


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


def _percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.0f}%"


def _micros(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


RUN_HEADER = (
    "scenario",
    "round",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "errors",
    "client CPU",
    "server us/req",
)


def run_row(result: RunResult) -> list[str]:
    return [
        result.scenario,
        str(result.round),
        f"{result.rps:,.0f}",
        f"{result.latency(50):.2f}",
        f"{result.latency(90):.2f}",
        f"{result.latency(99):.2f}",
        f"{result.latency(100):.2f}",
        str(result.errors + result.failed_connections),
        _percent(result.client_cpu),
        _micros(result.server_us_per_request),
        *(_percent(value) for value in result.probes.values()),
    ]


def _probe_names(results: Sequence[RunResult]) -> list[str]:
    return list(results[0].probes) if results else []


def runs_table(results: Sequence[RunResult], probes: Sequence[str] | None = None) -> str:
    """One row per run; `probes` names the probe columns when `results` is empty."""
    names = _probe_names(results) if probes is None else list(probes)
    return _table((*RUN_HEADER, *names), (run_row(r) for r in results))


def by_scenario(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.scenario, []).append(result)
    return grouped


def summary_table(results: Sequence[RunResult]) -> str:
    """Per scenario: the median over rounds of each figure."""
    rows = []
    names = _probe_names(results)
    for scenario, runs in by_scenario(results).items():
        rows.append(
            [
                scenario,
                str(len(runs)),
                f"{statistics.median(r.rps for r in runs):,.0f}",
                f"{statistics.median(r.latency(50) for r in runs):.2f}",
                f"{statistics.median(r.latency(90) for r in runs):.2f}",
                f"{statistics.median(r.latency(99) for r in runs):.2f}",
                f"{max(r.latency(100) for r in runs):.2f}",
                str(sum(r.errors + r.failed_connections for r in runs)),
                _percent(statistics.median(r.client_cpu for r in runs)),
                _micros(statistics.median(r.server_us_per_request for r in runs)),
                *(
                    _percent(statistics.median(r.probes.get(n, float("nan")) for r in runs))
                    for n in names
                ),
            ]
        )
    header = ("scenario", "rounds", *RUN_HEADER[2:], *names)
    return _table(header, rows)


def _safe_ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom and bottom == bottom else float("nan")


def ratio(results: Sequence[RunResult], numerator: str, denominator: str) -> dict[str, Any]:
    """`numerator` against `denominator`, of the medians and round by round.

    `ratio` is of requests/s (the budget's figure); `cpu_ratio` is the inverse ratio of
    server CPU per request: what the requests/s ratio would be on a core of its own.
    """
    grouped = by_scenario(results)
    top, bottom = grouped.get(numerator, []), grouped.get(denominator, [])
    if not top or not bottom:
        return {}
    pairs = [(a, b) for a in bottom for b in top if a.round == b.round]
    return {
        "numerator": numerator,
        "denominator": denominator,
        "ratio": _safe_ratio(
            statistics.median(r.rps for r in top), statistics.median(r.rps for r in bottom)
        ),
        "per_round": {a.round: _safe_ratio(b.rps, a.rps) for a, b in pairs},
        "cpu_ratio": _safe_ratio(
            statistics.median(r.server_us_per_request for r in bottom),
            statistics.median(r.server_us_per_request for r in top),
        ),
        "cpu_per_round": {
            a.round: _safe_ratio(a.server_us_per_request, b.server_us_per_request) for a, b in pairs
        },
    }


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

"""Figures over runs, and how they are printed: the one copy every bench uses.

- `percentile` (nearest rank, of sorted values) and `median` (nan values left out);
- `ratio`: a scenario against a baseline measured in the same run, of the medians over
  rounds and round by round (runs of the same round paired), the inverse for figures
  where lower is better (CPU per request, p99);
- `table`: a right-aligned Markdown table; `pct` and `num` format its cells (`-` for a
  missing figure); `runs_table` (a row per run) and `medians_table` (a row per scenario,
  each figure summed up over its rounds) from one list of `Column`s.

A run is any object with `round` (and whatever the value functions read); runs are
named by a `name` function (a scenario, a system).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class Run(Protocol):
    """What `ratio` and the tables need of a run: its round."""

    @property
    def round(self) -> int: ...


R = TypeVar("R")
RunT = TypeVar("RunT", bound=Run)
Value = Callable[[Any], float]
NAN = float("nan")


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0-100) of an already sorted sequence (nan when empty)."""
    if not ordered:
        return NAN
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    """The median of the values that are not nan (nan when none is)."""
    known = sorted(v for v in values if not math.isnan(v))
    if not known:
        return NAN
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def maximum(values: Iterable[float]) -> float:
    """The largest value that is not nan (nan when none is)."""
    return max((v for v in values if not math.isnan(v)), default=NAN)


def group(runs: Iterable[R], name: Callable[[R], str]) -> dict[str, list[R]]:
    """Runs by name, in the order the names first appear."""
    grouped: dict[str, list[R]] = {}
    for run in runs:
        grouped.setdefault(name(run), []).append(run)
    return grouped


def safe_ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom and not math.isnan(bottom) else NAN


def ratio(
    runs: Sequence[Run],
    numerator: str,
    denominator: str,
    *,
    name: Callable[[Any], str],
    higher: Value,
    lower: Mapping[str, Value] | None = None,
) -> dict[str, Any]:
    """`numerator` against the baseline `denominator`, both measured in this run.

    `ratio` is median(higher) of the numerator over that of the baseline, `per_round` the
    same for the runs of each round. For each `lower` figure `k` (lower is better: CPU
    per request, a p99), `k_ratio` and `k_per_round` are the inverse: baseline over
    numerator, so above 1 means better than the baseline too. Empty when either is
    missing.
    """
    grouped = group(runs, name)
    top, bottom = grouped.get(numerator, []), grouped.get(denominator, [])
    if not top or not bottom:
        return {}
    pairs = [(b, t) for b in bottom for t in top if b.round == t.round]
    info: dict[str, Any] = {
        "numerator": numerator,
        "denominator": denominator,
        "ratio": safe_ratio(median(map(higher, top)), median(map(higher, bottom))),
        "per_round": {b.round: safe_ratio(higher(t), higher(b)) for b, t in pairs},
    }
    for key, value in (lower or {}).items():
        info[f"{key}_ratio"] = safe_ratio(median(map(value, bottom)), median(map(value, top)))
        info[f"{key}_per_round"] = {b.round: safe_ratio(value(b), value(t)) for b, t in pairs}
    return info


def pct(value: float | None) -> str:
    """A share as a percentage (0.97 -> `97%`)."""
    return "-" if value is None or math.isnan(value) else f"{100 * value:.0f}%"


def num(value: float | None, digits: int = 0) -> str:
    """A figure with thousands separators and `digits` decimals."""
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, every column right-aligned."""
    cells = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def two(value: float | None) -> str:
    """Milliseconds and the like: two decimals."""
    return num(value, 2)


@dataclass(frozen=True)
class Column(Generic[RunT]):
    """A column of the tables: its header, the figure of one run, how it is shown, and
    how `medians_table` sums up the rounds of a scenario (median; `maximum` for a max,
    `sum` for counts)."""

    header: str
    value: Callable[[RunT], Any]
    show: Callable[[Any], str] = num
    over_rounds: Callable[[list[Any]], Any] = median


def probe_column(name: str) -> Column[Any]:
    """The share of one core the probe `name` measured (runs with a `probes` dict)."""
    return Column(name, lambda run: run.probes.get(name, NAN), pct)


def probe_names(runs: Sequence[Any]) -> list[str]:
    """The probes of the first run, in order (runs with a `probes` dict)."""
    return list(runs[0].probes) if runs else []


def runs_table(
    runs: Sequence[RunT], label: str, name: Callable[[RunT], str], columns: Sequence[Column[RunT]]
) -> str:
    """One row per run: its name (under `label`), its round, then `columns`."""
    header = (label, "round", *(c.header for c in columns))
    rows = ([name(r), str(r.round), *(c.show(c.value(r)) for c in columns)] for r in runs)
    return table(header, rows)


def medians_table(
    runs: Sequence[RunT], label: str, name: Callable[[RunT], str], columns: Sequence[Column[RunT]]
) -> str:
    """One row per name: how many rounds, then each column summed up over them."""
    rows = [
        [key, str(len(of)), *(c.show(c.over_rounds([c.value(r) for r in of])) for c in columns)]
        for key, of in group(runs, name).items()
    ]
    return table((label, "rounds", *(c.header for c in columns)), rows)

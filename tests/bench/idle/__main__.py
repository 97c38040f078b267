"""`python -m tests.bench.idle`: see tests/bench/idle/__init__.py."""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.bench import idle
from tests.bench.common import ROOT, machine
from tests.bench.common.figures import median, medians_table, runs_table, safe_ratio
from tests.bench.common.probes import memory
from tests.bench.common.runner import alternate, pick, write_json
from tests.bench.idle import runs
from tests.bench.idle.runs import (
    COLUMNS,
    SERVER_DESCRIPTORS,
    Crowd,
    IdleRun,
    bare_server,
    crowd,
    raise_descriptor_limit,
    realtime_server,
    tokens_file,
)

HOOK = Path(__file__).parent / "hook"  # the profiled server's sitecustomize
SYSTEMS = ("realtime", "bare")


def measure(args: argparse.Namespace, system: str, round_: int, folder: Path) -> IdleRun:
    """One server, its RSS before any socket, `args.sockets` idle sockets, the RSS again."""
    if system == "realtime":
        workdir = folder / f"{system}-{round_}"
        workdir.mkdir()
        tokens: Path | None = tokens_file(workdir)  # before the server reads the key
        server = realtime_server(workdir)
    else:
        server, tokens = bare_server(args.allocator), None
    how = Crowd(args.sockets, args.clients, args.settle, tokens)
    return runs.measure(system, round_, server, how)


def report(runs: list[IdleRun]) -> None:
    print("\nmedians over the rounds:")
    print(medians_table(runs, "system", lambda r: r.system, COLUMNS))
    of = {name: [r for r in runs if r.system == name] for name in SYSTEMS}
    if of["realtime"] and of["bare"]:
        per = [median(r.kib_per_socket for r in of[name]) for name in SYSTEMS]
        rss = [median(r.before["rss_mib"] for r in of[name]) for name in SYSTEMS]
        print(
            f"realtime / bare: KiB per idle socket {safe_ratio(*per):.2f} "
            f"({per[0]:.1f} / {per[1]:.1f}), RSS before any socket {safe_ratio(*rss):.2f} "
            f"({rss[0]:.1f} / {rss[1]:.1f} MiB)"
        )


# -- --profile -------------------------------------------------------------------------


def dump(pid: int, folder: Path, n: int, timeout: float = 300.0) -> dict[str, Any]:
    """Ask the profiled server for its n-th dump (the hook's SIGUSR1) and load it."""
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"{n}.pickle"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server wrote no dump within {timeout} s")
        time.sleep(0.2)
    with path.open("rb") as handle:
        loaded: dict[str, Any] = pickle.load(handle)
        return loaded


def _where(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3."):
        if marker in name:
            name = name.split(marker, 1)[1]
    return f"{name}:{frame.lineno}"


def _package(traceback: tracemalloc.Traceback) -> str:
    """Who allocated: the package of the most recent frame outside the standard library
    (asyncio's allocations are charged to the code that called it)."""
    for frame in reversed(traceback):
        name = frame.filename
        if "site-packages/" in name:
            return name.split("site-packages/", 1)[1].split("/", 1)[0]
        if name.startswith(str(ROOT) + "/"):
            return name[len(str(ROOT)) + 1 :].split("/", 1)[0]
    return "standard library"


def per_socket(before: Counter[str], after: Counter[str], sockets: int, floor: float) -> str:
    grown = {key: (after[key] - before[key]) / sockets for key in after}
    shown = sorted(((v, k) for k, v in grown.items() if v >= floor), reverse=True)
    return "\n".join(f"  {value:6.2f}  {key}" for value, key in shown)


def profile(args: argparse.Namespace, folder: Path, system: str) -> None:
    dumps = folder / "dumps"
    dumps.mkdir()
    env = {
        "BENCH_IDLE_FRAMES": str(args.frames),
        "PYTHONPATH": f"{HOOK}:{ROOT}",
        "BENCH_IDLE_DUMP": str(dumps),
    }
    workdir = folder / "profiled"
    workdir.mkdir()
    if system == "realtime":
        tokens: Path | None = tokens_file(workdir)
        server = realtime_server(workdir, **env)
    else:
        tokens, server = None, bare_server(args.allocator, **env)
    with server as (pid, port):
        time.sleep(args.settle)
        first, rss_before = dump(pid, dumps, 0), memory(pid)["rss_mib"]
        with crowd(port, args.profile, args.clients, tokens, 0) as (opened, failed):
            time.sleep(args.settle)
            second, rss_after = dump(pid, dumps, 1), memory(pid)["rss_mib"]
    stats = second["snapshot"].compare_to(first["snapshot"], "traceback")
    traced = sum(stat.size_diff for stat in stats)
    print(
        f"{opened} sockets ({failed} failed): RSS +{(rss_after - rss_before) * 1024 / opened:.1f}"
        f" KiB per socket (tracemalloc on), traced +{traced / 1024 / opened:.2f} KiB per socket"
    )
    by_package: Counter[str] = Counter()
    for stat in stats:
        by_package[_package(stat.traceback)] += stat.size_diff
    print("\nallocated per socket by package (the first frame outside the standard library):")
    for package, size in by_package.most_common():
        if abs(size) >= opened:
            print(f"  {size / opened:8.0f} B  {package}")
    print(f"\nallocations per socket by traceback (the {args.top} largest):")
    for stat in sorted(stats, key=lambda s: -s.size_diff)[: args.top]:
        frames = " <- ".join(_where(frame) for frame in reversed(stat.traceback[-args.depth :]))
        print(
            f"  {stat.size_diff / opened:8.0f} B {stat.count_diff / opened:5.1f} blocks  {frames}"
        )
    print("\nlive objects per socket by type (at least 0.5):")
    print(per_socket(first["types"], second["types"], opened, 0.5))
    print("\nsuspended coroutines per socket (their frames):")
    print(per_socket(first["coroutines"], second["coroutines"], opened, 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.idle", description=idle.__doc__)
    parser.add_argument("--sockets", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each read")
    parser.add_argument(
        "--allocator",
        default="malloc",
        help="PYTHONMALLOC of the bare baseline (default malloc, what `realtime serve` runs on)",
    )
    parser.add_argument(
        "--profile", type=int, help="profile the first of --systems with N sockets instead"
    )
    parser.add_argument("--frames", type=int, default=12, help="--profile: traceback depth")
    parser.add_argument("--depth", type=int, default=5, help="--profile: frames printed")
    parser.add_argument("--top", type=int, default=25, help="--profile: tracebacks printed")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    hard = raise_descriptor_limit()
    room = hard - SERVER_DESCRIPTORS
    about = machine.probe()
    print(machine.describe(about, ("uvicorn", "uvloop", "websockets", "starlette")), flush=True)
    if args.sockets > room:
        print(f"{args.sockets} sockets capped to {room}: the descriptor limit is {hard}")
        args.sockets = room
    with tempfile.TemporaryDirectory(prefix="realtime-idle-") as folder:
        if args.profile:
            profile(args, Path(folder), pick(args.systems, SYSTEMS, "systems")[0])
            return
        systems = pick(args.systems, SYSTEMS, "systems")
        runs = alternate(
            args.rounds,
            systems,
            lambda system, round_: measure(args, system, round_, Path(folder)),
            lambda runs: runs_table(runs, "system", lambda r: r.system, COLUMNS),
        )
    report(runs)
    write_json(
        args.json, {"machine": about, "args": vars(args), "runs": [asdict(run) for run in runs]}
    )


if __name__ == "__main__":
    main()

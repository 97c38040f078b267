"""Run the benchmarks: `python -m tests.bench [--rounds 4] [--duration 10] ...`.

Starts the bench server (tests.bench.app on uvicorn, pinned to CPU 0), pins this process
(the load generator) to CPU 1, then runs the scenarios in alternation (bare, echo, bare,
echo, ...) against the same server process, so drift hits every scenario alike. Prints
every run, the medians per scenario and the ratio echo/bare of requests per second
(DESIGN.md "Performance budgets": at least 0.8). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from realtime.auth.dev import DevIssuer
from tests.bench import ablations, report
from tests.bench.app import ROOT
from tests.bench.loadgen import LoadOptions, Probe, client_kind, run_request_reply
from tests.bench.report import CoreBusy, ProcessCPU, RunResult
from tests.bench.scenarios import RATIOS, SCENARIOS, Target
from tests.bench.server import bench_server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--connections", type=int, default=50, help="sockets (default 50)")
    parser.add_argument(
        "--pipeline", type=int, default=16, help="requests in flight per socket (default 16)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per run (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every scenario")
    parser.add_argument(
        "--payload-bytes", type=int, default=64, help="size of `data` in JSON (default 64)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, run in this order each round (default {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--client", choices=["auto", "picows", "websockets"], default="auto", help="load client"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client CPUs")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the rounds, one more run of --profile-scenario with py-spy attached to "
        "the server; collapsed stacks are written to this file (not part of the tables)",
    )
    parser.add_argument("--profile-scenario", default="echo")
    parser.add_argument(
        "--ablate",
        default="",
        help="diagnostic: switch parts of the full stack off in the server, comma-separated "
        f"({', '.join(ablations.ABLATIONS)}); see tests/bench/ablations.py",
    )
    return parser


class PySpy:
    """A probe that samples the server with py-spy over the measurement window."""

    def __init__(self, pid: int, duration: float, output: Path) -> None:
        self.command = [
            shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration))),
            "--rate",
            "200",
            # sample without stopping the process: blocking samples land on system calls
            # (the socket writes) far more often than the time spent there
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)

    def stop(self) -> float:
        if self.process is not None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return float("nan")


def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git(),
    }


def _git() -> str:
    """The commit measured, and the files of the server that differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "realtime", "handlers", "schema"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return commit + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def _pin_self(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def _probes(server_pid: int, pinned: bool) -> dict[str, Probe]:
    probes: dict[str, Probe] = {"server CPU": ProcessCPU(server_pid)}
    if pinned:  # whole cores, softirq (loopback TCP) included
        probes |= {"core 0 busy": CoreBusy(0), "core 1 busy": CoreBusy(1)}
    return probes


async def _bench(
    args: argparse.Namespace, target: Target, server_pid: int, pinned: bool
) -> list[RunResult]:
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios: {unknown}; known: {sorted(SCENARIOS)}")
    options = LoadOptions(
        connections=args.connections,
        pipeline=args.pipeline,
        warmup=args.warmup,
        duration=args.duration,
        client=args.client,
    )
    results: list[RunResult] = []
    print(report.runs_table([], _probes(server_pid, pinned)).splitlines()[0], flush=True)
    for round_ in range(1, args.rounds + 1):
        for name in names:
            workload = SCENARIOS[name](target)
            result = await run_request_reply(
                workload, options, _probes(server_pid, pinned), round_=round_
            )
            results.append(result)
            print(report.runs_table([result]).splitlines()[-1], flush=True)
            await asyncio.sleep(0.5)  # let the server close the sockets of the last run
    if args.profile:
        workload = SCENARIOS[args.profile_scenario](target)
        spy = PySpy(server_pid, args.duration, args.profile)
        probes = {**_probes(server_pid, pinned), "py-spy": spy}
        profiled = await run_request_reply(workload, options, probes, round_=0)
        profiled.scenario += " (py-spy, not in the tables)"
        print(report.runs_table([profiled]), flush=True)
        print(f"py-spy collapsed stacks: {args.profile}")
    return results


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    try:
        ablations.parse(args.ablate)
    except ValueError as error:
        parser.error(str(error))
    machine = _machine()
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory(prefix="realtime-bench-") as tmp:
        key_file = str(Path(tmp) / "dev-key.json")
        issuer = DevIssuer.load_or_create(key_file, audience="realtime", client_id="realtime")
        token = issuer.mint("alice", ["user"], tenant="bench", ttl=24 * 3600)
        env = {"BENCH_DEV_KEY_FILE": key_file, ablations.ENV: args.ablate}
        with bench_server(env, cpu=0 if pin else None) as (pid, port):
            if pin:
                _pin_self(1)
            target = Target("127.0.0.1", port, token, args.payload_bytes)
            print(
                f"server pid {pid} on 127.0.0.1:{port}{' (CPU 0)' if pin else ''}; "
                f"load generator pid {os.getpid()}{' (CPU 1)' if pin else ''}, "
                f"client {client_kind(args.client)}; {args.connections} connections x "
                f"{args.pipeline} in flight, {args.payload_bytes} B payload, "
                f"{args.warmup:g} s warm-up + {args.duration:g} s measured, "
                f"{args.rounds} rounds; python {machine['python']}, nproc {machine['nproc']}"
                + f"; code {machine['git']}"
                + (f"; DIAGNOSTIC ABLATIONS in the server: {args.ablate}" if args.ablate else ""),
                flush=True,
            )
            started = time.monotonic()
            results = asyncio.Runner(loop_factory=_loop_factory()).run(
                _bench(args, target, pid, pin)
            )
            elapsed = time.monotonic() - started

    print("\nall runs:")
    print(report.runs_table(results))
    print("\nmedians over rounds:")
    print(report.summary_table(results))
    ratios = [report.ratio(results, top, bottom) for top, bottom, _ in RATIOS]
    for info, (_, _, goal) in zip(ratios, RATIOS, strict=True):
        print(report.ratio_line(info, goal))
    print(
        "CPU shares are of one core over the measured window; a client near 100% means "
        "the load generator, not the server, set the pace."
    )
    print(f"total {elapsed:.0f} s")
    if args.json:
        document = report.to_json(results, machine=machine, args=vars(args), ratios=ratios)
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 0


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())

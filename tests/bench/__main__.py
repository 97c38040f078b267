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
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bench import ablations, report
from tests.bench.common import machine as machine_probe
from tests.bench.common.probes import Probe, cpu_probes
from tests.bench.common.pyspy import PySpy
from tests.bench.common.runner import (
    alternate,
    dev_tokens,
    event_loop,
    pick,
    pin_self,
    pinning,
    write_json,
)
from tests.bench.loadgen import LoadOptions, client_kind, run_request_reply
from tests.bench.report import RunResult
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


def _probes(server_pid: int, pinned: bool) -> dict[str, Probe]:
    return cpu_probes({report.SERVER_CPU: server_pid}, pinned)


def _bench(
    args: argparse.Namespace, names: list[str], target: Target, server_pid: int, pinned: bool
) -> list[RunResult]:
    """The rounds (bare, echo, bare, echo, ...) on one event loop, then the profile run."""
    options = LoadOptions(
        connections=args.connections,
        pipeline=args.pipeline,
        warmup=args.warmup,
        duration=args.duration,
        client=args.client,
    )

    def measure(name: str, round_: int, **extra: Probe) -> RunResult:
        probes = {**_probes(server_pid, pinned), **extra}
        workload = SCENARIOS[name](target)
        return loop.run(run_request_reply(workload, options, probes, round_=round_))

    with event_loop() as loop:
        results = alternate(
            args.rounds,
            names,
            measure,
            report.runs_table,
            # let the server close the sockets of the last run
            after=lambda: loop.run(asyncio.sleep(0.5)),
        )
        if args.profile:
            spy = PySpy(server_pid, args.duration, args.profile)
            profiled = measure(args.profile_scenario, 0, **{"py-spy": spy})
            profiled.scenario += " (py-spy, not in the tables)"
            print(report.runs_table([profiled]), flush=True)
            print(f"py-spy collapsed stacks: {args.profile}")
    return results


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    try:
        ablations.parse(args.ablate)
        names = pick(args.scenarios, SCENARIOS)
        pick(args.profile_scenario, SCENARIOS)
    except ValueError as error:
        parser.error(str(error))
    machine = machine_probe.probe()
    pin = pinning(args.no_pin)
    with tempfile.TemporaryDirectory(prefix="realtime-bench-") as tmp:
        key_file = str(Path(tmp) / "dev-key.json")
        token = dev_tokens(key_file, {"alice": ["user"]})["alice"]
        env = {"BENCH_DEV_KEY_FILE": key_file, ablations.ENV: args.ablate}
        with bench_server(env, cpu=0 if pin else None) as (pid, port):
            if pin:
                pin_self(1)
            target = Target("127.0.0.1", port, token, args.payload_bytes)
            print(
                f"server pid {pid} on 127.0.0.1:{port}{' (CPU 0)' if pin else ''}; "
                f"load generator pid {os.getpid()}{' (CPU 1)' if pin else ''}, "
                f"client {client_kind(args.client)}; {args.connections} connections x "
                f"{args.pipeline} in flight, {args.payload_bytes} B payload, "
                f"{args.warmup:g} s warm-up + {args.duration:g} s measured, "
                f"{args.rounds} rounds; {machine_probe.describe(machine)}"
                + (f"; DIAGNOSTIC ABLATIONS in the server: {args.ablate}" if args.ablate else ""),
                flush=True,
            )
            started = time.monotonic()
            results = _bench(args, names, target, pid, pin)
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
    write_json(args.json, report.to_json(results, machine=machine, args=vars(args), ratios=ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())

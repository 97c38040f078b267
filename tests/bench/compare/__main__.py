"""`python -m tests.bench.compare`: see tests/bench/compare/__init__.py."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench import compare
from tests.bench.common import machine as machine_probe
from tests.bench.common.probes import Probe, cpu_probes, noise_probes
from tests.bench.common.runner import alternate, dev_tokens, pick, pin_self, pinning, run
from tests.bench.common.runner import write_json as write_document
from tests.bench.compare import systems as rows
from tests.bench.compare import tables
from tests.bench.compare.systems import ECHO, FANOUT, IDLE, Context, System
from tests.bench.compare.tables import Run
from tests.bench.fanout.clients import DIALECTS, PUBLISHER, SUBSCRIBER
from tests.bench.fanout.runs import Options as FanoutOptions
from tests.bench.fanout.runs import Result as FanoutResult
from tests.bench.fanout.runs import run_once
from tests.bench.fanout.systems import flush_redis
from tests.bench.fanout.systems import server as fanout_server
from tests.bench.idle import runs as idle
from tests.bench.loadgen import LoadOptions, run_request_reply
from tests.bench.report import SERVER_CPU, RunResult
from tests.bench.scenarios import Target

FIGURES = (ECHO, FANOUT, IDLE)
VERSIONS = (
    *("uvicorn", "uvloop", "httptools", "websockets", "starlette", "orjson"),
    *("picows", "python-socketio", "channels", "redis"),
)
Load = tuple[int, int]  # connections, requests in flight on each


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.compare",
        description=compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="rounds of every run (default 3)")
    add("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    add(
        "--systems",
        default=",".join(rows.known()),
        help=f"comma-separated, the table's columns (default {','.join(rows.known())})",
    )
    add("--figures", default=",".join(FIGURES), help="comma-separated (default echo,fanout,idle)")
    add(
        "--echo-loads",
        default="10x16,100x1,1x1",
        help="echo: connections x requests in flight, comma-separated (default 10x16,100x1,1x1)",
    )
    add("--payload-bytes", type=int, default=64, help="echo: size of `data` (default 64)")
    add("--subscribers", type=int, default=1000, help="fan-out subscribers (default 1000)")
    add(
        "--idle-sockets",
        type=int,
        default=5000,
        help="idle sockets (default 5000; 20000: the target's, capped by the descriptor limit)",
    )
    add("--idle-clients", type=int, default=4, help="idle: client processes (default 4)")
    add("--idle-settle", type=float, default=5.0, help="idle: seconds before each RSS read (5)")
    add("--redis-url", default="redis://127.0.0.1:6379", help="local Redis, without the db")
    add("--redis-db", type=int, default=13, help="realtime-redis: the database (flushed; 13)")
    add("--no-pin", action="store_true", help="do not pin the servers and the client")
    add("--json", type=Path, help="also write every figure to this file")
    return parser


def _loads(value: str) -> list[Load]:
    try:
        pairs = [tuple(int(n) for n in item.split("x")) for item in value.split(",") if item]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise ValueError(f"--echo-loads: CONNECTIONSxIN_FLIGHT, comma-separated, not {value!r}")
    return [(p[0], p[1]) for p in pairs]


def _probes(pid: int, context: Context) -> dict[str, Probe]:
    """The server's CPU, both cores' busy share (pinned), and the machine's noise."""
    return {**cpu_probes({SERVER_CPU: pid}, context.cpu is not None), **noise_probes([pid])}


def _echo(
    args: argparse.Namespace, system: System, load: Load, round_: int, context: Context
) -> RunResult:
    assert system.echo is not None
    connections, pipeline = load
    options = LoadOptions(
        connections=connections, pipeline=pipeline, warmup=args.warmup, duration=args.duration
    )
    with rows.echo_server(system.echo, context) as (pid, port):
        target = Target("127.0.0.1", port, context.token, args.payload_bytes)
        workload = system.echo.workload(target)
        return run(run_request_reply(workload, options, _probes(pid, context), round_=round_))


def _fanout(
    args: argparse.Namespace,
    system: System,
    round_: int,
    context: Context,
    tokens: dict[str, str],
) -> FanoutResult:
    setup = system.fanout
    assert setup is not None
    redis_url = f"{args.redis_url}/{args.redis_db}"
    options = FanoutOptions(
        subscribers=args.subscribers, warmup=args.warmup, duration=args.duration
    )
    if setup.redis:
        flush_redis(redis_url)
    try:
        with fanout_server(setup, context.tmp, context.key, redis_url, context.cpu) as (pid, port):
            base = f"ws://127.0.0.1:{port}"
            return run(
                run_once(
                    DIALECTS[setup.dialect](tokens),
                    options,
                    subscribe_to=base,
                    publish_to=base,
                    probes=_probes(pid, context),
                    round_=round_,
                    system=system.name,
                )
            )
    finally:
        if setup.redis:
            flush_redis(redis_url)


def _idle(args: argparse.Namespace, system: System, round_: int, context: Context) -> idle.IdleRun:
    setup = system.idle
    assert setup is not None
    folder = context.tmp / f"idle-{system.name}-{round_}"
    folder.mkdir()
    tokens = idle.tokens_file(folder) if setup.server is None else None  # realtime's key
    how = idle.Crowd(
        args.idle_sockets, args.idle_clients, args.idle_settle, tokens, setup.path, setup.socketio
    )
    server = rows.idle_server(setup, folder, context.cpu)
    return idle.measure(system.name, round_, server, how, lambda pid: noise_probes([pid]))


def _plan(
    names: Sequence[str], known: dict[str, System], kinds: Sequence[str], loads: Sequence[Load]
) -> dict[str, tuple[str, System, Load | None]]:
    """Each run of a round, in order: `<figure> <system>` -> (figure, system, load)."""
    plan: dict[str, tuple[str, System, Load | None]] = {}
    for kind in kinds:
        for load in loads if kind == ECHO else [None]:
            figure = f"{kind} {load[0]}x{load[1]}" if load else kind
            for name in names:
                if known[name].has(kind):
                    plan[f"{figure} {name}"] = (figure, known[name], load)
    return plan


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    known = rows.known()
    try:
        names = pick(args.systems, known, "systems")
        kinds = pick(args.figures, FIGURES, "figures")
        loads = _loads(args.echo_loads)
    except ValueError as error:
        parser.error(str(error))
    hard = idle.raise_descriptor_limit()  # fan-out and idle sockets; children inherit it
    room = hard - idle.SERVER_DESCRIPTORS
    capped = ""
    if args.idle_sockets > room:
        capped = f" (capped from {args.idle_sockets}: the descriptor limit is {hard})"
        args.idle_sockets = room
    pin = pinning(args.no_pin)
    machine = machine_probe.probe()
    print(machine_probe.describe(machine, VERSIONS), flush=True)
    print(
        f"systems {','.join(names)}; figures {','.join(kinds)}; {args.rounds} rounds; "
        f"echo {args.echo_loads} ({args.payload_bytes} B), fan-out to {args.subscribers} "
        f"subscribers: {args.warmup:g} s warm-up + {args.duration:g} s measured; "
        f"{args.idle_sockets} idle sockets{capped}; "
        + ("servers on CPU 0, load on CPU 1" if pin else "not pinned"),
        flush=True,
    )
    plan = _plan(names, known, kinds, loads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="realtime-compare-") as directory:
        tmp = Path(directory)
        key = str(tmp / "dev-key.json")
        # `broadcast` is published by the deployment's `operator` only (permissions.toml)
        users = {"alice": ["user"], "fanout-sub": ["user"], "fanout-pub": ["operator"]}
        minted = dev_tokens(key, users)
        tokens = {SUBSCRIBER: minted["fanout-sub"], PUBLISHER: minted["fanout-pub"]}
        context = Context(tmp, key, minted["alice"], 0 if pin else None)
        if pin:
            pin_self(1)

        def measure(name: str, round_: int) -> Run:
            figure, system, load = plan[name]
            try:
                if load is not None:
                    result: tables.Result = _echo(args, system, load, round_, context)
                elif figure == FANOUT:
                    result = _fanout(args, system, round_, context, tokens)
                else:
                    result = _idle(args, system, round_, context)
            except (OSError, RuntimeError, TimeoutError, ValueError) as error:
                # reported as FAILED in its table and in the checks; the others go on
                return Run(figure, system.name, round_, None, f"{type(error).__name__}: {error}")
            return Run(figure, system.name, round_, result)

        runs = alternate(args.rounds, list(plan), measure, tables.runs_table)
    _report(args, runs, [known[n] for n in names], loads, kinds)
    print(f"total {time.monotonic() - started:.0f} s")
    figures_ = tables.rows(loads, args.subscribers, args.idle_sockets)
    document = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": [r.summary() for r in runs],
        "medians": {
            f.label: {n: tables.medians(runs, f, n) for n in names if known[n].has(f.kind)}
            for f in figures_
        },
        "ratios": {
            f.label: {n: tables.ratio(runs, f, n) for n in names if known[n].has(f.kind)}
            for f in figures_
        },
        "not_applicable": {n: known[n].not_applicable for n in names if known[n].not_applicable},
    }
    write_document(args.json, document)
    return 0


def _report(
    args: argparse.Namespace,
    runs: list[Run],
    systems: list[System],
    loads: Sequence[Load],
    kinds: Sequence[str],
) -> None:
    figures_ = [
        f for f in tables.rows(loads, args.subscribers, args.idle_sockets) if f.kind in kinds
    ]
    print(
        "\nside by side (medians over the rounds; n/a: the system has no such figure, see "
        "below; -: not run, or every run of it failed):"
    )
    print(tables.figures_table(runs, figures_, systems))
    print(
        f"\nratios to {tables.BASELINE} Starlette of this run (its median over bare's; "
        "above 1 is better for rates, below 1 for µs, KiB and MiB):"
    )
    print(tables.ratios_table(runs, figures_, systems))
    print(
        "\nthe machine's noise in the worst round of each (%): steal = the hypervisor's "
        "share of the machine's time, others = other programs' CPU over the window "
        "(of one core), peak = their worst 250 ms (of one core); idle: before the sockets:"
    )
    print(tables.noise_table(runs, list(dict.fromkeys(r.figure for r in runs)), systems))
    for system in systems:
        reasons: dict[str, list[str]] = {}
        for figure, why in system.not_applicable.items():
            reasons.setdefault(why, []).append(figure)
        for why, which in reasons.items():
            print(f"n/a: {system.name} {', '.join(which)}: {why}")
    problems = tables.checks(runs)
    print(
        "checks: "
        + ("every run connected, answered and delivered everything" if not problems else "")
    )
    for line in problems:
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())

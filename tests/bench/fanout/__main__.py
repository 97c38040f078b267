"""Fan-out and cross-node latency: `python -m tests.bench.fanout [--rounds 2] ...`.

Fan-out: for each system (realtime on the in-process bus, realtime on the Redis bus,
python-socketio, Django Channels, and the bare Starlette ceiling) a fresh server process pinned to CPU 0 (same uvicorn
command for all), and in this process (pinned to CPU 1) `--subscribers` picows sockets
subscribed to one topic plus one publisher, closed loop (`--window` publications in
flight): deliveries per second over `--duration` seconds after `--warmup`. The systems
alternate round by round, so drift hits them alike.

Cross-node: two realtime nodes on the same Redis (node A on CPU 0, node B on CPU 1),
`--cross-subscribers` sockets on node A, a publisher on node B at `--cross-rates`
publications per second (one run per rate); publish-to-deliver latency of every delivery
to every `--cross-sample-every`-th subscriber (all of them count what they receive).

Loopback only; Redis db `--redis-db` of the local server is flushed before each Redis
run. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench.common import figures
from tests.bench.common import machine as machine_probe
from tests.bench.common.figures import Column, group, median, num, pct, probe_column, table, two
from tests.bench.common.probes import CoreBusy, OthersPeak, Probe, cpu_probes
from tests.bench.common.pyspy import PySpy
from tests.bench.common.runner import (
    alternate,
    dev_tokens,
    pick,
    pin_self,
    pinning,
    run,
)
from tests.bench.common.runner import write_json as write_document
from tests.bench.fanout import diagnostics
from tests.bench.fanout.clients import DIALECTS, PUBLISHER, SUBSCRIBER, Dialect
from tests.bench.fanout.runs import Options, Result, run_once
from tests.bench.fanout.systems import System, flush_redis, server, systems

SYSTEMS = ("realtime-memory", "realtime-redis", "socketio", "channels", "bare")
BASELINE = "socketio"
TARGET_RATIO = 2.0
TARGET_P99_MS = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fanout", description=__doc__)
    add = parser.add_argument
    add("--subscribers", type=int, default=1000, help="fan-out subscribers (default 1000)")
    add("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    add("--rounds", type=int, default=2, help="rounds of every system (default 2)")
    add("--window", type=int, default=16, help="publications in flight (default 16)")
    add("--payload-bytes", type=int, default=100, help="published JSON size (default 100)")
    add("--sample-every", type=int, default=50, help="every n-th subscriber is timed")
    add("--systems", default=",".join(SYSTEMS), help="comma-separated, in this order")
    add("--cross-subscribers", type=int, default=100, help="cross-node subscribers (100)")
    add(
        "--cross-sample-every",
        type=int,
        default=10,
        help="cross-node: every n-th subscriber parses and times its deliveries, all count "
        "them (10; 1: every subscriber parses every delivery)",
    )
    add(
        "--cross-rates",
        default="1000",
        help="cross-node publications/s, comma-separated, one run each (default 1000)",
    )
    add("--no-cross", action="store_true", help="skip the cross-node latency runs")
    add("--redis-url", default="redis://127.0.0.1:6379", help="local Redis, without the db")
    add("--redis-db", type=int, default=5, help="the Redis database used and flushed (5)")
    add("--no-pin", action="store_true", help="do not pin servers and client to CPUs")
    add(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run wait up to this long for the machine to be quiet (default 60)",
    )
    add(
        "--quiet-below",
        type=float,
        default=0.15,
        help="quiet: both cores together busy below this share (default 0.15)",
    )
    add(
        "--patch",
        default="",
        help="diagnostic: patch realtime in its servers, comma-separated "
        f"({', '.join(diagnostics.PATCHES)}); see tests/bench/fanout/diagnostics.py",
    )
    add("--json", type=Path, help="also write every figure to this file")
    add("--profile", type=Path, help="py-spy: one more run per system, stacks into this dir")
    return parser


# -- processes --------------------------------------------------------------------------


def _raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's (and so its children's) open-file limit to what is needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- runs -------------------------------------------------------------------------------


def _busy_before(seconds: float = 0.5) -> float:
    """How busy the machine was just before a run (other processes), both cores together."""
    cores = [CoreBusy(cpu) for cpu in range(min(2, os.cpu_count() or 1))]
    for core in cores:
        core.start()
    time.sleep(seconds)
    return sum(core.stop() for core in cores) / len(cores)


def _wait_quiet(threshold: float, patience: float) -> float:
    """Wait (at most `patience` s) until other processes leave the cores mostly idle."""
    deadline = time.monotonic() + patience
    busy = _busy_before()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(2)
        busy = _busy_before()
    return busy


def _dialect(system: System, tokens: dict[str, str]) -> Dialect:
    return DIALECTS[system.dialect](tokens)


def _probes(pids: dict[str, int], pinned: bool) -> dict[str, Probe]:
    probes = cpu_probes(pids, pinned)
    probes["others peak"] = OthersPeak(list(pids.values()))
    return probes


def _fanout(
    args: argparse.Namespace,
    system: System,
    tmp: Path,
    key: str,
    tokens: dict[str, str],
    pin: bool,
    round_: int,
    profile: Path | None = None,
) -> Result:
    redis_url = f"{args.redis_url}/{args.redis_db}"
    if system.redis:
        flush_redis(redis_url)
    busy = _wait_quiet(args.quiet_below, args.quiet_wait)
    options = Options(
        subscribers=args.subscribers,
        warmup=args.warmup,
        duration=args.duration,
        window=args.window,
        payload_bytes=args.payload_bytes,
        sample_every=args.sample_every,
    )
    with server(system, tmp, key, redis_url, 0 if pin else None) as (pid, port):
        probes = _probes({"server CPU": pid}, pin)
        if profile is not None:
            probes["py-spy"] = PySpy(pid, args.duration, profile)
        base = f"ws://127.0.0.1:{port}"
        result = run(
            run_once(
                _dialect(system, tokens),
                options,
                subscribe_to=base,
                publish_to=base,
                probes=probes,
                round_=round_,
                system=system.name,
            )
        )
    if system.redis:
        flush_redis(redis_url)
    result.notes["busy_before"] = busy
    return result


def _cross(
    args: argparse.Namespace,
    tmp: Path,
    key: str,
    tokens: dict[str, str],
    pin: bool,
    round_: int,
    rate: float,
) -> Result:
    system = systems(args.patch)["realtime-redis"]
    redis_url = f"{args.redis_url}/{args.redis_db}"
    flush_redis(redis_url)
    busy = _wait_quiet(args.quiet_below, args.quiet_wait)
    options = Options(
        subscribers=args.cross_subscribers,
        warmup=args.warmup,
        duration=args.duration,
        rate=rate,
        payload_bytes=args.payload_bytes,
        sample_every=args.cross_sample_every,
    )
    with (
        server(system, tmp, key, redis_url, 0 if pin else None, "a") as (pid_a, port_a),
        server(system, tmp, key, redis_url, 1 if pin else None, "b") as (pid_b, port_b),
    ):
        result = run(
            run_once(
                Dialect(tokens),
                options,
                subscribe_to=f"ws://127.0.0.1:{port_a}",
                publish_to=f"ws://127.0.0.1:{port_b}",
                probes=_probes({"node A CPU": pid_a, "node B CPU": pid_b}, pin),
                round_=round_,
                system=f"cross-node{system.name.removeprefix('realtime-redis')} {rate:g}/s",
            )
        )
    flush_redis(redis_url)
    result.notes["busy_before"] = busy
    return result


# -- report -----------------------------------------------------------------------------


SERVER_PROBES = ("server CPU", "node A CPU")  # fan-out runs, cross-node runs


def _server_probe(result: Result) -> str:
    return SERVER_PROBES[0] if SERVER_PROBES[0] in result.probes else SERVER_PROBES[1]


def _server_us(result: Result) -> float:
    return result.server_us_per_delivery(_server_probe(result))


def _checks(result: Result) -> str:
    counts = f"{result.lost}/{result.skipped}/{result.disorder}/{result.errors + result.failed}"
    return counts + (" STALLED" if result.stalled else "")


def columns(extra: Sequence[str]) -> list[Column[Result]]:
    """After the system and the round; `extra` are the probes besides the server's."""
    return [
        Column("subs", lambda r: r.subscribers, str),
        Column("pubs/s", lambda r: r.publications_per_s),
        Column("deliveries/s", lambda r: r.deliveries_per_s),
        Column("p50 ms", lambda r: r.latency(50), two),
        Column("p99 ms", lambda r: r.latency(99), two),
        Column("max ms", lambda r: r.latency(100), two),
        Column("undelivered/skipped/disorder/errors", _checks, str),
        Column("client CPU", lambda r: r.client_cpu, pct),
        Column("server CPU", lambda r: r.probes.get(_server_probe(r)), pct),
        Column("server us/delivery", _server_us, two),
        *map(probe_column, extra),
        Column("busy before", lambda r: r.notes.get("busy_before"), pct),
        Column("client stall max ms", lambda r: r.notes.get("client_stall_max_ms"), two),
    ]


def runs_table(results: Sequence[Result]) -> str:
    skip = (*SERVER_PROBES, "py-spy")
    extra = [k for k in results[0].probes if k not in skip] if results else []
    return figures.runs_table(results, "system", lambda r: r.system, columns(extra))


def medians(results: Sequence[Result]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "runs": len(runs),
            "deliveries_per_s": median(r.deliveries_per_s for r in runs),
            "publications_per_s": median(r.publications_per_s for r in runs),
            "p50_ms": median(r.latency(50) for r in runs),
            "p99_ms": median(r.latency(99) for r in runs),
            "max_ms": max(r.latency(100) for r in runs),
            "server_us_per_delivery": median(map(_server_us, runs)),
            "client_cpu": median(r.client_cpu for r in runs),
            "lost": sum(r.lost for r in runs),
            "skipped": sum(r.skipped for r in runs),
            "disorder": sum(r.disorder for r in runs),
        }
        for name, runs in group(results, lambda r: r.system).items()
    }


def ratios(fanout: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Each system against the baseline (socketio) of the same run: deliveries/s, and
    the inverse of server CPU per delivery."""
    return {
        name: figures.ratio(
            fanout,
            name,
            BASELINE,
            name=lambda r: r.system,
            higher=lambda r: r.deliveries_per_s,
            lower={"cpu": _server_us},
        )
        for name in group(fanout, lambda r: r.system)
    }


def summary(fanout: Sequence[Result], cross: Sequence[Result]) -> str:
    by_system, against = medians(fanout), ratios(fanout)
    rows = [
        [
            name,
            str(m["runs"]),
            num(m["deliveries_per_s"]),
            two(against[name].get("ratio")),
            two(m["server_us_per_delivery"]),
            two(against[name].get("cpu_ratio")),
            pct(m["client_cpu"]),
            f"{m['lost']}/{m['skipped']}/{m['disorder']}",
        ]
        for name, m in by_system.items()
    ]
    lines = [
        table(
            (
                "system",
                "runs",
                "deliveries/s",
                f"x {BASELINE}",
                "server us/delivery",
                f"x {BASELINE} (CPU)",
                "client CPU",
                "undelivered/skipped/disorder",
            ),
            rows,
        )
    ]
    for name in [n for n in by_system if n.startswith("realtime-")]:
        if against[name]:
            times_base = against[name]["ratio"]
            verdict = "met" if times_base >= TARGET_RATIO else "MISSED"
            lines.append(
                f"target {name} >= {TARGET_RATIO}x {BASELINE}: {times_base:.2f}x, {verdict}"
            )
    for name, m in medians(cross).items():
        verdict = "met" if m["p99_ms"] < TARGET_P99_MS else "MISSED"
        lines.append(
            f"{name} ({cross[0].subscribers} subscribers on node A, publisher on node B, "
            f"{m['publications_per_s']:,.0f} publications/s sent, "
            f"{m['deliveries_per_s']:,.0f} deliveries/s): p50 {m['p50_ms']:.2f} ms, "
            f"p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.2f} ms, undelivered {m['lost']:,}, "
            f"skipped {m['skipped']:,}, disorder {m['disorder']:,}; "
            f"target p99 < {TARGET_P99_MS:g} ms: {verdict}"
        )
    return "\n".join(lines)


VERSIONS = ("uvicorn", "uvloop", "starlette", "picows", "python-socketio", "channels")


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    try:
        known = systems(args.patch)
        names = pick(args.systems, known, "systems")
    except ValueError as error:
        parser.error(str(error))
    try:
        rates = [float(r) for r in args.cross_rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--cross-rates: numbers separated by commas")
    nofile = _raise_nofile(2 * args.subscribers + 256)
    pin = pinning(args.no_pin)
    machine = machine_probe.probe()
    print(
        f"{args.subscribers} subscribers, window {args.window}, {args.payload_bytes} B payload, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured, {args.rounds} rounds; "
        f"cross-node {args.cross_subscribers} subscribers at {args.cross_rates}/s "
        f"(every {args.cross_sample_every}th timed); "
        f"nofile {nofile[0]}; {machine_probe.describe(machine, VERSIONS)}"
        + (f"\nDIAGNOSTIC PATCHES in realtime: {args.patch}" if args.patch else ""),
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="realtime-fanout-") as directory:
        tmp = Path(directory)
        key = str(tmp / "dev-key.json")
        # `broadcast` is published by the deployment's `operator` only (permissions.toml)
        minted = dev_tokens(key, {"fanout-sub": ["user"], "fanout-pub": ["operator"]})
        tokens = {SUBSCRIBER: minted["fanout-sub"], PUBLISHER: minted["fanout-pub"]}
        if pin:
            pin_self(1)
        # each round: every system's fan-out run, then a cross-node run per rate
        crossing = {f"cross {rate:g}/s": rate for rate in ([] if args.no_cross else rates)}

        def measure(name: str, round_: int) -> Result:
            if name in crossing:
                return _cross(args, tmp, key, tokens, pin, round_, crossing[name])
            return _fanout(args, known[name], tmp, key, tokens, pin, round_)

        results = alternate(args.rounds, [*names, *crossing], measure, runs_table)
        fanout = [r for r in results if not r.notes["rate"]]
        cross = [r for r in results if r.notes["rate"]]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name in names:
                output = args.profile / f"{name}.txt"
                result = _fanout(args, known[name], tmp, key, tokens, pin, 0, output)
                print(f"py-spy run: {runs_table([result]).splitlines()[-1]} -> {output}")

    print(
        "\nall runs (undelivered: deliveries never received, after the drain; skipped and"
        "\ndisorder: on the sampled subscribers, sequence numbers jumped over, and duplicates"
        "\nor steps back; errors: error answers + failed sockets; CPU: share of one core):"
    )
    print(runs_table(fanout))
    if cross:
        print()
        print(runs_table(cross))
    print("\nmedians over rounds:")
    print(summary(fanout, cross))
    print(f"total {time.monotonic() - started:.0f} s")
    document = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "fanout": [r.summary() for r in fanout],
        "cross": [r.summary() for r in cross],
        "medians": medians(fanout) | medians(cross),
        "ratios": ratios(fanout),
    }
    write_document(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())

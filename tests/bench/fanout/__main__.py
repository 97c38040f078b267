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
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realtime.auth.dev import DevIssuer
from tests.bench.fanout import diagnostics
from tests.bench.fanout.apps import ROOT
from tests.bench.fanout.clients import DIALECTS, PUBLISHER, SUBSCRIBER, Dialect
from tests.bench.fanout.runs import Options, Result, run_once
from tests.bench.loadgen import Probe
from tests.bench.report import CoreBusy, OthersPeak, ProcessCPU
from tests.bench.server import bench_server

APPS = "tests.bench.fanout.apps"
SYSTEMS = ("realtime-memory", "realtime-redis", "socketio", "channels", "bare")
BASELINE = "socketio"
TARGET_RATIO = 2.0
TARGET_P99_MS = 10.0


@dataclass(frozen=True)
class System:
    name: str
    factory: str
    dialect: str  # realtime, socketio or channels
    redis: bool = False
    env: dict[str, str] = field(default_factory=dict)


def _systems(patch: str = "") -> dict[str, System]:
    """By name; `patch` (diagnostics) goes to the realtime servers and into their names."""
    env = {diagnostics.ENV: patch}
    suffix = "".join(f"+{name}" for name in diagnostics.parse(patch))
    factory = f"{APPS}:realtime_app"
    return {
        "realtime-memory": System(f"realtime-memory{suffix}", factory, "realtime", False, env),
        "realtime-redis": System(f"realtime-redis{suffix}", factory, "realtime", True, env),
        "socketio": System("socketio", f"{APPS}:socketio_app", "socketio"),
        "channels": System("channels", f"{APPS}:channels_app", "channels"),
        "bare": System("bare", f"{APPS}:bare_app", "bare"),
    }


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


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def _server(
    system: System, tmp: Path, key: str, redis_url: str, cpu: int | None, node: str = "a"
) -> Iterator[tuple[int, int]]:
    workdir = tmp / f"{system.name}-{node}"
    workdir.mkdir(exist_ok=True)
    env = {"BENCH_FANOUT_DIR": str(workdir), "BENCH_FANOUT_KEY": key, **system.env}
    if system.redis:
        env["BENCH_FANOUT_REDIS_URL"] = redis_url
    with bench_server(env, cpu=cpu, factory=system.factory) as (pid, port):
        yield pid, port


class PySpy:
    """py-spy attached to a server over the measurement window (a probe)."""

    def __init__(self, pid: int, seconds: float, output: Path) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        self.command = [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(output),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> float:
        if self.process is not None:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return float("nan")


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
    probes: dict[str, Probe] = {name: ProcessCPU(pid) for name, pid in pids.items()}
    if pinned:
        probes |= {"core 0 busy": CoreBusy(0), "core 1 busy": CoreBusy(1)}
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
        _flush_redis(redis_url)
    busy = _wait_quiet(args.quiet_below, args.quiet_wait)
    options = Options(
        subscribers=args.subscribers,
        warmup=args.warmup,
        duration=args.duration,
        window=args.window,
        payload_bytes=args.payload_bytes,
        sample_every=args.sample_every,
    )
    with _server(system, tmp, key, redis_url, 0 if pin else None) as (pid, port):
        probes = _probes({"server CPU": pid}, pin)
        if profile is not None:
            probes["py-spy"] = PySpy(pid, args.duration, profile)
        base = f"ws://127.0.0.1:{port}"
        result = _run(
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
        _flush_redis(redis_url)
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
    system = _systems(args.patch)["realtime-redis"]
    redis_url = f"{args.redis_url}/{args.redis_db}"
    _flush_redis(redis_url)
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
        _server(system, tmp, key, redis_url, 0 if pin else None, "a") as (pid_a, port_a),
        _server(system, tmp, key, redis_url, 1 if pin else None, "b") as (pid_b, port_b),
    ):
        result = _run(
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
    _flush_redis(redis_url)
    result.notes["busy_before"] = busy
    return result


def _run(coroutine: Any) -> Result:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)  # type: ignore[no-any-return]
    return asyncio.Runner(loop_factory=uvloop.new_event_loop).run(coroutine)  # type: ignore[no-any-return]


# -- report -----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.0f}%"


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _row(result: Result) -> list[str]:
    probes = result.probes
    server = probes.get("server CPU", probes.get("node A CPU"))
    return [
        result.system,
        str(result.round),
        str(result.subscribers),
        f"{result.publications_per_s:,.0f}",
        f"{result.deliveries_per_s:,.0f}",
        _ms(result.latency(50)),
        _ms(result.latency(99)),
        _ms(result.latency(100)),
        f"{result.lost}/{result.skipped}/{result.disorder}/{result.errors + result.failed}"
        + (" STALLED" if result.stalled else ""),
        _pct(result.client_cpu),
        _pct(server),
        _ms(
            result.server_us_per_delivery("server CPU" if "server CPU" in probes else "node A CPU")
        ),
        *(_pct(v) for k, v in probes.items() if k not in ("server CPU", "node A CPU", "py-spy")),
        _pct(result.notes.get("busy_before")),
        _ms(result.notes.get("client_stall_max_ms", float("nan"))),
    ]


HEADER = (
    "system",
    "round",
    "subs",
    "pubs/s",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "undelivered/skipped/disorder/errors",
    "client CPU",
    "server CPU",
    "server us/delivery",
)


def _extra_names(results: Sequence[Result]) -> list[str]:
    if not results:
        return []
    skip = ("server CPU", "node A CPU", "py-spy")
    return [k for k in results[0].probes if k not in skip]


def runs_table(results: Sequence[Result]) -> str:
    header = (*HEADER, *_extra_names(results), "busy before", "client stall max ms")
    return _table(header, [_row(r) for r in results])


def _median(results: Sequence[Result], value: Any) -> float:
    values = [value(r) for r in results]
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def medians(results: Sequence[Result]) -> dict[str, dict[str, float]]:
    grouped: dict[str, list[Result]] = {}
    for result in results:
        grouped.setdefault(result.system, []).append(result)
    return {
        name: {
            "runs": len(runs),
            "deliveries_per_s": _median(runs, lambda r: r.deliveries_per_s),
            "publications_per_s": _median(runs, lambda r: r.publications_per_s),
            "p50_ms": _median(runs, lambda r: r.latency(50)),
            "p99_ms": _median(runs, lambda r: r.latency(99)),
            "max_ms": max(r.latency(100) for r in runs),
            "server_us_per_delivery": _median(
                runs,
                lambda r: r.server_us_per_delivery(
                    "server CPU" if "server CPU" in r.probes else "node A CPU"
                ),
            ),
            "client_cpu": _median(runs, lambda r: r.client_cpu),
            "lost": sum(r.lost for r in runs),
            "skipped": sum(r.skipped for r in runs),
            "disorder": sum(r.disorder for r in runs),
        }
        for name, runs in grouped.items()
    }


def summary(fanout: Sequence[Result], cross: Sequence[Result]) -> str:
    table = medians(fanout)
    base = table.get(BASELINE, {}).get("deliveries_per_s", float("nan"))
    base_cpu = table.get(BASELINE, {}).get("server_us_per_delivery", float("nan"))
    rows = [
        [
            name,
            str(m["runs"]),
            f"{m['deliveries_per_s']:,.0f}",
            f"{m['deliveries_per_s'] / base:.2f}" if base == base and base else "-",
            _ms(m["server_us_per_delivery"]),
            f"{base_cpu / m['server_us_per_delivery']:.2f}" if base_cpu == base_cpu else "-",
            _pct(m["client_cpu"]),
            f"{m['lost']}/{m['skipped']}/{m['disorder']}",
        ]
        for name, m in table.items()
    ]
    lines = [
        _table(
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
    for name in [n for n in table if n.startswith("realtime-")]:
        if base == base and base:
            ratio = table[name]["deliveries_per_s"] / base
            verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
            lines.append(f"target {name} >= {TARGET_RATIO}x {BASELINE}: {ratio:.2f}x, {verdict}")
    for name, m in medians(cross).items():
        verdict = "met" if m["p99_ms"] < TARGET_P99_MS else "MISSED"
        lines.append(
            f"{name} ({cross[0].subscribers} subscribers on node A, publisher on node B, "
            f"{m['publications_per_s']:,.0f} publications/s sent, "
            f"{m['deliveries_per_s']:,.0f} deliveries/s): p50 {m['p50_ms']:.2f} ms, "
            f"p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.2f} ms, undelivered {m['lost']:,}, "
            f"skipped {m['skipped']:,}, disorder {m['disorder']:,}; target p99 < {TARGET_P99_MS:g} ms: {verdict}"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    versions = {}
    for package in ("uvicorn", "uvloop", "starlette", "picows", "python-socketio", "channels"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "realtime", "handlers", "schema"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.splitlines()
    changed = [line[3:] for line in dirty if line.strip()]
    if changed:
        commit += f" + uncommitted changes to {', '.join(changed)}"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": commit,
    }


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    try:
        systems = _systems(args.patch)
    except ValueError as error:
        parser.error(str(error))
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in systems]
    if unknown:
        parser.error(f"unknown systems {unknown}; known: {list(systems)}")
    try:
        rates = [float(r) for r in args.cross_rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--cross-rates: numbers separated by commas")
    nofile = _raise_nofile(2 * args.subscribers + 256)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    machine = _machine()
    print(
        f"{args.subscribers} subscribers, window {args.window}, {args.payload_bytes} B payload, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s measured, {args.rounds} rounds; "
        f"cross-node {args.cross_subscribers} subscribers at {args.cross_rates}/s "
        f"(every {args.cross_sample_every}th timed); "
        f"nofile {nofile[0]}; python {machine['python']}, nproc {machine['nproc']}, "
        f"code {machine['git']}; {machine['versions']}"
        + (f"; DIAGNOSTIC PATCHES in realtime: {args.patch}" if args.patch else ""),
        flush=True,
    )
    fanout: list[Result] = []
    cross: list[Result] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="realtime-fanout-") as directory:
        tmp = Path(directory)
        key = str(tmp / "dev-key.json")
        issuer = DevIssuer.load_or_create(key, audience="realtime", client_id="realtime")
        tokens = {
            SUBSCRIBER: issuer.mint("fanout-sub", ["user"], tenant="bench", ttl=24 * 3600),
            PUBLISHER: issuer.mint("fanout-pub", ["admin"], tenant="bench", ttl=24 * 3600),
        }
        if pin:
            os.sched_setaffinity(0, {1})
        for round_ in range(1, args.rounds + 1):
            for name in names:
                result = _fanout(args, systems[name], tmp, key, tokens, pin, round_)
                fanout.append(result)
                print(runs_table([result]), flush=True)
            for rate in [] if args.no_cross else rates:
                result = _cross(args, tmp, key, tokens, pin, round_, rate)
                cross.append(result)
                print(runs_table([result]), flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name in names:
                output = args.profile / f"{name}.txt"
                result = _fanout(args, systems[name], tmp, key, tokens, pin, 0, output)
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
    if args.json:
        document = {
            "machine": machine,
            "args": {k: str(v) for k, v in vars(args).items()},
            "fanout": [r.summary() for r in fanout],
            "cross": [r.summary() for r in cross],
            "medians": medians(fanout) | medians(cross),
        }
        args.json.write_text(json.dumps(document, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

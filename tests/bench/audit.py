"""`projects.create` with and without the audit log, A/B in one run (issue 14).

    python -m tests.bench.audit [--duration 120] [--period 2]            # interleave
    python -m tests.bench.audit --mode toggle [--rounds 12] [--duration 5]
    python -m tests.bench.audit --mode processes [--rounds 10] [--duration 8]

The PostgreSQL database of `--database-url` is created if missing and migrated with
`realtime migrate`. realtime runs on uvicorn (uvloop, httptools, one worker) pinned to CPU
0, the load generator (picows, `--connections` sockets with `--pipeline` requests in
flight each, `projects.create` over /ws) pinned to CPU 1. PostgreSQL's CPU is that of the
bench database's backends, found by their process titles. Three ways to compare:

- `interleave` (default): one server, one long run; auditing is switched off and on
  every `--period` seconds (ABBA), and each period's wall time, server CPU, PostgreSQL
  CPU and creates answered go to its state. The steadiest on a shared machine: a burst of
  another program's work falls on both states alike.
- `toggle`: one server, auditing switched between runs of `--duration` s, ABBA rounds.
- `processes`: two servers, the shipped app and the same packages with `audited=False`.

The switch (`POST /bench/audit/on|off`, this module's factory, no auth: a bench on
127.0.0.1) empties or restores the router's set of audited packages. The tables are
emptied before each run; after each audited run of `toggle` and `processes` the audit log
must hold one row per project created (checked and printed).

Then it measures the audit log's own work apart, which the machine's load moves little:
`AuditLog.record` (what a request pays, on its path) per call, in this process; and
writing 100,000 rows in batches of 500 through the shipped store (what the flusher pays,
off the path): this process's CPU and the PostgreSQL backends' CPU per row, against the
server + PostgreSQL CPU of a create without auditing. Target: auditing costs at most 10%.
Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.bench.common import ROOT
from tests.bench.common.probes import ProcessCPU
from tests.bench.common.runner import dev_tokens, pin_self, pinning
from tests.bench.loadgen import LoadOptions, Workload, envelope, run_request_reply, status_ok
from tests.bench.projects import database
from tests.bench.projects.probes import PostgresCPU, backends
from tests.bench.report import RunResult
from tests.bench.server import bench_server

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/realtime_bench_audit"
CREATE = 10  # projects.create
TOGGLED = "tests.bench.audit:create_toggled"
SCENARIOS = {
    "audited": "tests.bench.audit:create_audited",
    "plain": "tests.bench.audit:create_unaudited",
}
SERVER_CPU, POSTGRES_CPU = "server CPU", "postgres CPU"
TARGET = 0.90


def _app(audited: bool) -> Starlette:
    from realtime.app import create_app, load_handlers
    from realtime.settings import Settings

    settings = Settings.from_env()
    packages, tasks = load_handlers(settings.handlers)
    if not audited:
        packages = [dataclasses.replace(p, audited=False) for p in packages]
    return create_app(settings, packages, tasks)


def create_audited() -> Starlette:
    return _app(audited=True)


def create_unaudited() -> Starlette:
    return _app(audited=False)


def create_toggled() -> Starlette:
    """The shipped app, plus `POST /bench/audit/on|off` (no auth: a bench on 127.0.0.1),
    which switches the router's recording of audited packages at run time."""
    app = _app(audited=True)

    async def toggle(request: Request) -> PlainTextResponse:
        """Switch; answers the state and, at the switch, this process's CPU seconds and
        the projects.create answered so far (for --mode interleave)."""
        dispatcher = request.app.state.services.dispatcher
        state = request.path_params["state"]
        audited = frozenset(p.id for p in dispatcher.catalog if p.audited)
        dispatcher.audited = audited if state == "on" else frozenset()
        answered = sum(
            tally.count
            for (package, status, _), tally in dispatcher.metrics.requests.tallies.items()
            if package == "projects.create" and status == "OK"
        )
        return PlainTextResponse(f"{state} {time.process_time()} {answered}")

    app.router.routes.append(Route("/bench/audit/{state:str}", toggle, methods=["POST"]))
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.audit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--database-url", default=DEFAULT_URL, help=f"PostgreSQL (default {DEFAULT_URL})")
    add("--rounds", type=int, default=4)
    add(
        "--duration",
        type=float,
        default=None,
        help="seconds measured per run (default: 120 for interleave, 8 otherwise)",
    )
    add("--warmup", type=float, default=2.0)
    add("--connections", type=int, default=8)
    add("--pipeline", type=int, default=8)
    add("--no-pin", action="store_true", help="leave every process to the scheduler")
    add(
        "--mode",
        choices=("interleave", "toggle", "processes"),
        default="interleave",
        help="interleave (default): one long run on one server, auditing switched every "
        "--period s; toggle: one server, switched between runs; processes: two servers, "
        "one built with audited=False",
    )
    add("--period", type=float, default=2.0, help="interleave: seconds per state")
    add(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both servers (diagnostics, e.g. REALTIME_AUDIT_FLUSH=3600)",
    )
    return parser


async def _sql(url: str, *statements: str) -> list[Any]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [await connection.fetchval(statement) for statement in statements]
    finally:
        await connection.close()


def _empty(url: str) -> None:
    asyncio.run(_sql(url, "TRUNCATE projects, project_counts, audit_log RESTART IDENTITY"))


def _counts(url: str) -> tuple[int, int]:
    projects, rows = asyncio.run(
        _sql(url, "SELECT count(*) FROM projects", "SELECT count(*) FROM audit_log")
    )
    return int(projects), int(rows)


def _env(url: str, key_file: str) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "REALTIME_DEV_KEY_FILE": key_file,
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_DEV_USERS_FILE": str(ROOT / "dev-users.toml"),
        "REALTIME_RATE_LIMIT": "1e9",
        "REALTIME_RATE_BURST": str(10**9),
        "REALTIME_MAX_INFLIGHT": "1024",
        "REALTIME_SEND_QUEUE": "4096",
        "REALTIME_LOG_LEVEL": "warning",
    }


def _workload(name: str, port: int, token: str) -> Workload:
    return Workload(
        name,
        f"ws://127.0.0.1:{port}/ws",
        envelope(CREATE, {"name": "bench", "description": "audit A/B"}),
        status_ok,
        {"Authorization": f"Bearer {token}"},
    )


def _run(
    name: str, port: int, pid: int, token: str, args: argparse.Namespace, round_: int
) -> RunResult:
    workload = _workload(name, port, token)
    options = LoadOptions(
        connections=args.connections,
        pipeline=args.pipeline,
        warmup=args.warmup,
        duration=args.duration,
    )
    probes = {
        SERVER_CPU: ProcessCPU(pid),
        POSTGRES_CPU: PostgresCPU(database.database_name(args.database_url)),
    }
    return asyncio.run(run_request_reply(workload, options, probes, round_))


def _per_request(result: RunResult, probe: str) -> float:
    share = result.probes.get(probe, float("nan"))
    return share * result.duration / max(result.completed, 1) * 1e6


def _line(result: RunResult, check: str) -> str:
    return (
        f"{result.scenario:8} round {result.round}: {result.rps:8.0f} req/s  "
        f"p50 {result.latency(50):6.2f} ms  p99 {result.latency(99):6.2f} ms  "
        f"server {_per_request(result, SERVER_CPU):6.0f} us/req  "
        f"postgres {_per_request(result, POSTGRES_CPU):6.0f} us/req  "
        f"errors {result.errors}  {check}"
    )


def _summary(results: list[RunResult]) -> None:
    def median(name: str, figure: Any) -> float:
        return statistics.median(figure(r) for r in results if r.scenario == name)

    figures = {
        "req/s": lambda r: r.rps,
        "server us/req": lambda r: _per_request(r, SERVER_CPU),
        "postgres us/req": lambda r: _per_request(r, POSTGRES_CPU),
        "p99 ms": lambda r: r.latency(99),
    }
    print("\nmedians          audited      plain   audited/plain")
    for label, figure in figures.items():
        a, p = median("audited", figure), median("plain", figure)
        print(f"{label:15} {a:9.1f} {p:10.1f} {a / p:10.3f}")
    ratios = []
    for round_ in sorted({r.round for r in results}):
        pair = {r.scenario: r for r in results if r.round == round_}
        ratios.append(pair["audited"].rps / pair["plain"].rps)
    print("req/s audited/plain per round: " + ", ".join(f"{r:.3f}" for r in ratios))
    ratio = median("audited", figures["req/s"]) / median("plain", figures["req/s"])
    verdict = "met" if ratio >= TARGET else "MISSED"
    print(f"target: audited/plain req/s >= {TARGET:.2f}: {ratio:.3f} ({verdict})")


async def _components(url: str, rows: int = 100_000) -> dict[str, float]:
    """CPU per audit row: recording it (request path) and writing it (the flusher)."""
    from handlers import audit_sql
    from realtime.audit import AuditLog
    from realtime.auth.principal import Principal
    from realtime.db import BoundedDatabase
    from realtime.packages import Context, Package

    principal = Principal("bench", None, None, None, frozenset(), {}, "bench", 0, {})
    package = Package(CREATE, "projects.create", lambda ctx, data: data, audited=True)
    ctx = Context(principal, package, None, "r-000001")  # type: ignore[arg-type]
    answer = {"id": 123456, "name": "bench", "tenant_id": "bench"}
    data = {"name": "bench", "description": "audit A/B"}
    db = BoundedDatabase(url, 5.0, min_size=1, max_size=1)
    await db.connect()
    try:
        log = AuditLog(audit_sql, db, capacity=rows, batch=500, interval=3600, timeout=30)
        started = time.process_time()
        for _ in range(rows):
            log.record(ctx, "ws", "OK", answer, data)
        record_us = (time.process_time() - started) / rows * 1e6
        await audit_sql.write(db, [log._row(p) for p in log._pending[:10]])  # warm the pool
        postgres = PostgresCPU(database.database_name(url))
        postgres.start()
        wall, started = time.perf_counter(), time.process_time()
        while log.waiting:
            assert await log.flush_once()
        write_us = (time.process_time() - started) / rows * 1e6
        pg_us = postgres.stop() * (time.perf_counter() - wall) / rows * 1e6
    finally:
        await db.disconnect()
    return {"record": record_us, "write (server)": write_us, "write (postgres)": pg_us}


def _plain_create(results: list[RunResult]) -> float:
    """Server + PostgreSQL CPU per create without auditing (median of the plain runs)."""
    plain = [r for r in results if r.scenario == "plain"]
    return statistics.median(
        _per_request(r, SERVER_CPU) + _per_request(r, POSTGRES_CPU) for r in plain
    )


def _cost(components: dict[str, float], create: float) -> None:
    added = sum(components.values())
    print("\nthe audit log's own work, CPU per row (this process, PostgreSQL's backends):")
    for name, us in components.items():
        print(f"  {name:17} {us:7.2f} us")
    print(
        f"  sum {added:.1f} us per create, against {create:.0f} us of server + PostgreSQL "
        f"CPU per plain create (median): {added / create:.1%} (target: at most 10%)"
    )


def _toggle(port: int, name: str) -> tuple[float, int]:
    """Switch the server to `name`; its (CPU seconds, creates answered) at the switch."""
    state = "on" if name == "audited" else "off"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/bench/audit/{state}", b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        told, cpu, answered = answer.read().decode().split()
    assert told == state
    return float(cpu), int(answered)


def _interleave(port: int, pid: int, token: str, args: argparse.Namespace) -> float:
    """One long run; auditing switched every `--period` s; each period's wall time, the
    server's CPU, PostgreSQL's CPU and the creates answered go to the state it was in."""
    totals = {name: [0.0, 0.0, 0.0, 0] for name in ("audited", "plain")}  # wall, cpu, pg, n
    pg = database.database_name(args.database_url)
    periods = int(args.duration // args.period)

    def sample(name: str) -> tuple[float, float, float, int]:
        cpu, answered = _toggle(port, name)
        return time.perf_counter(), cpu, sum(backends(pg).values()), answered

    async def switching() -> None:
        order = ("plain", "audited", "audited", "plain")  # ABBA: neither always follows
        await asyncio.sleep(args.warmup)
        last = await asyncio.to_thread(sample, order[0])
        for index in range(periods):
            await asyncio.sleep(args.period)
            now = await asyncio.to_thread(sample, order[(index + 1) % 4])
            total = totals[order[index % 4]]
            for i in range(3):
                total[i] += now[i] - last[i]
            total[3] += now[3] - last[3]
            last = now

    async def both() -> RunResult:
        options = LoadOptions(
            connections=args.connections,
            pipeline=args.pipeline,
            warmup=args.warmup,
            duration=args.warmup + periods * args.period + 1,
        )
        workload = _workload("interleave", port, token)
        await asyncio.to_thread(_toggle, port, "plain")  # the warm-up is not audited
        load = asyncio.create_task(run_request_reply(workload, options, {}, 0))
        await switching()
        return await load

    result = asyncio.run(both())
    print(f"interleave: {periods} periods of {args.period} s, errors {result.errors}")
    print("state      periods s   req/s   server us/req   postgres us/req")
    for name, (wall, cpu, pg_cpu, answered) in totals.items():
        n = max(answered, 1)
        print(
            f"{name:8} {wall:10.1f} {answered / wall:7.0f} {cpu / n * 1e6:15.0f} "
            f"{pg_cpu / n * 1e6:17.0f}"
        )
    (aw, ac, ap, an), (pw, pc, pp, pn) = totals["audited"], totals["plain"]
    print(
        f"audited/plain: req/s {an / aw / (pn / pw):.3f}, server CPU/req {ac / an / (pc / pn):.3f}, "
        f"postgres CPU/req {ap / an / (pp / pn):.3f} (target: req/s >= {TARGET:.2f})"
    )
    return (pc + pp) / max(pn, 1) * 1e6


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.duration is None:
        args.duration = 120.0 if args.mode == "interleave" else 8.0
    pinned = pinning(args.no_pin)
    if pinned:
        pin_self(1)
    asyncio.run(database.create_database(args.database_url))
    database.migrate(args.database_url)
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as stack:
        key_file = str(Path(workdir) / "dev-key.json")
        token = dev_tokens(key_file, {"bench": ["user"]})["bench"]
        env = _env(args.database_url, key_file) | dict(e.split("=", 1) for e in args.env)
        cpu = 0 if pinned else None
        if args.mode == "interleave":
            pid, port = stack.enter_context(bench_server(env, cpu=cpu, factory=TOGGLED))
            _run("warm-up", port, pid, token, args, 0)
            _empty(args.database_url)
            create = _interleave(port, pid, token, args)
            time.sleep(1.0)
            projects, rows = _counts(args.database_url)
            print(f"projects {projects}, audit rows {rows} (the audited periods' creates)")
            _empty(args.database_url)
            _cost(asyncio.run(_components(args.database_url)), create)
            _empty(args.database_url)
            return 0
        if args.mode == "toggle":
            one = stack.enter_context(bench_server(env, cpu=cpu, factory=TOGGLED))
            servers = {"audited": one, "plain": one}
        else:
            servers = {
                name: stack.enter_context(bench_server(env, cpu=cpu, factory=factory))
                for name, factory in SCENARIOS.items()
            }
        for pid, port in set(servers.values()):  # unrecorded: pools, caches, first-run costs
            _run("warm-up", port, pid, token, args, 0)
        results: list[RunResult] = []
        for round_ in range(1, args.rounds + 1):
            order = ["audited", "plain"] if round_ % 2 else ["plain", "audited"]
            for name in order:
                pid, port = servers[name]
                if args.mode == "toggle":
                    _toggle(port, name)
                _empty(args.database_url)
                result = _run(name, port, pid, token, args, round_)
                time.sleep(1.0)  # the last batch of audit rows (0.2 s flush)
                projects, rows = _counts(args.database_url)
                expected = projects if name == "audited" else 0
                check = f"projects {projects}, audit rows {rows}"
                check += "" if rows == expected else f" (EXPECTED {expected})"
                print(_line(result, check), flush=True)
                results.append(result)
    _summary(results)
    _empty(args.database_url)
    _cost(asyncio.run(_components(args.database_url)), _plain_create(results))
    _empty(args.database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

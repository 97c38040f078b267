"""`projects.create` with and without the audit log, A/B in one run (issue 14).

    python -m tests.bench.audit [--rounds 4] [--duration 8] [--connections 8] [--pipeline 8]

1. Creates the PostgreSQL database of `--database-url` if missing and migrates it with
   `realtime migrate`.
2. Starts two realtime servers on it, each on uvicorn (uvloop, httptools, one worker),
   both pinned to CPU 0 (the load generator pins itself to CPU 1): `audited`, the app as
   shipped (`projects.create` is `audited=True`), and `plain`, the same packages with
   `audited=False` (`create_unaudited` below). Nothing else differs.
3. After one unrecorded run on each server (pools, caches), each round empties `projects`, `project_counts` and `audit_log`, then runs both,
   audited first in odd rounds and plain first in even ones (so neither always runs on
   the larger table): `projects.create` (pkg_id 10) over /ws with the picows load
   generator, `--connections` sockets with `--pipeline` requests in flight each.
4. After each audited run, checks that the audit log holds one row per project created
   (the rows are written ~0.2 s later, off the request path).
5. Prints every run, the medians, and audited/plain for requests/s (target: at least
   0.90, "auditing costs at most 10%"), server CPU per request and PostgreSQL CPU per
   request (the backends of the bench database, found by their process titles).
6. Measures the audit log's own work apart, steadier than any A/B on a shared machine:
   `AuditLog.record` (what a request pays, on its path) per call, in this process; and
   writing rows in batches of 500 through the shipped store (what the flusher pays,
   off the path): this process's CPU and the PostgreSQL backends' CPU per row. Their sum
   against the plain runs' server + PostgreSQL CPU per create is the cost auditing adds.
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
from tests.bench.projects.probes import PostgresCPU
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
        dispatcher = request.app.state.services.dispatcher
        state = request.path_params["state"]
        audited = frozenset(p.id for p in dispatcher.catalog if p.audited)
        dispatcher.audited = audited if state == "on" else frozenset()
        return PlainTextResponse(state)

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
    add("--duration", type=float, default=8.0, help="seconds measured per run")
    add("--warmup", type=float, default=2.0)
    add("--connections", type=int, default=8)
    add("--pipeline", type=int, default=8)
    add("--no-pin", action="store_true", help="leave every process to the scheduler")
    add(
        "--mode",
        choices=("toggle", "processes"),
        default="toggle",
        help="toggle (default): one server, auditing switched on and off between runs; "
        "processes: two servers, one built with audited=False",
    )
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


def _run(
    name: str, port: int, pid: int, token: str, args: argparse.Namespace, round_: int
) -> RunResult:
    workload = Workload(
        name,
        f"ws://127.0.0.1:{port}/ws",
        envelope(CREATE, {"name": "bench", "description": "audit A/B"}),
        status_ok,
        {"Authorization": f"Bearer {token}"},
    )
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


def _cost(components: dict[str, float], results: list[RunResult]) -> None:
    plain = [r for r in results if r.scenario == "plain"]
    create = statistics.median(
        _per_request(r, SERVER_CPU) + _per_request(r, POSTGRES_CPU) for r in plain
    )
    added = sum(components.values())
    print("\nthe audit log's own work, CPU per row (this process, PostgreSQL's backends):")
    for name, us in components.items():
        print(f"  {name:17} {us:7.2f} us")
    print(
        f"  sum {added:.1f} us per create, against {create:.0f} us of server + PostgreSQL "
        f"CPU per plain create (median): {added / create:.1%} (target: at most 10%)"
    )


def _toggle(port: int, name: str) -> None:
    state = "on" if name == "audited" else "off"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/bench/audit/{state}", b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.read().decode() == state


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    _cost(asyncio.run(_components(args.database_url)), results)
    _empty(args.database_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`projects.list` on PostgreSQL: realtime (socket and REST) against FastAPI + SQLModel.

    python -m tests.bench.projects [--rounds 3] [--duration 10] [--profile DIR] ...

1. Creates the database of `--database-url` if missing, migrates it with
   `realtime migrate` and seeds it (tests/bench/projects/database.py): 10,000 live
   projects of tenant `bench`, 2,000 of another tenant, 1,000 soft-deleted.
2. Starts two servers, each on uvicorn (uvloop, httptools, 1 worker), both pinned to
   CPU 0: realtime (`realtime.app:create_app`, configured by the environment like
   `realtime serve`) and the baseline (`tests.bench.projects.fastapi_app:create_app`).
   Pins itself (and so wrk) to CPU 1.
3. Checks once that both serve the same page for the same token.
4. Each round runs, in this order against the same server processes:
   `socket` (`projects.list`, pkg_id 11, over /ws with the picows load generator),
   `rest` (realtime's `GET /projects` with wrk) and `fastapi` (the baseline's
   `GET /projects` with wrk); pages 1 to `--pages` of 20, in turn.
5. Prints every run, the medians, and the ratios against the targets: rest/fastapi
   >= 1.5 and socket/fastapi >= 2 (requests/s). Nothing asserts a timing.

PostgreSQL is the machine's: only the backends serving the bench database are touched,
pinned to CPU 1 with the load generator when each measurement starts (`--no-pin-postgres`
leaves them to the scheduler); their CPU time is measured and shown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from realtime.auth.dev import DevIssuer
from tests.bench.app import ROOT
from tests.bench.loadgen import LoadOptions, Probe, Workload, client_kind, run_request_reply
from tests.bench.projects import database, http_load, results
from tests.bench.projects.probes import PostgresCPU
from tests.bench.projects.profiling import PySpy, profile_summary
from tests.bench.projects.results import POSTGRES_CPU, SERVER_CPU, Row
from tests.bench.report import CoreBusy, ProcessCPU
from tests.bench.server import bench_server

PKG_ID = 11  # projects.list
PER_PAGE = database.PER_PAGE
REALTIME_FACTORY = "realtime.app:create_app"
ABLATED_FACTORY = "tests.bench.projects.ablation:create_app"
FASTAPI_FACTORY = "tests.bench.projects.fastapi_app:create_app"
SCENARIOS = ("socket", "rest", "fastapi")
TARGETS = [("rest", "fastapi", 1.5), ("socket", "fastapi", 2.0)]
DEFAULT_URL = database.DEFAULT_URL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.projects",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--database-url", default=DEFAULT_URL, help=f"PostgreSQL (default {DEFAULT_URL})")
    add("--rounds", type=int, default=3, help="rounds of every scenario (default 3)")
    add("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds before each (default 2)")
    add("--http-connections", type=int, default=64, help="wrk connections (default 64)")
    add("--ws-connections", type=int, default=16, help="sockets (default 16)")
    add("--pipeline", type=int, default=4, help="requests in flight per socket (default 4)")
    add("--pages", type=int, default=50, help="walk pages 1..N of 20 (default 50)")
    add("--pool-size", type=int, default=10, help="database connections per server (10)")
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated, in this order")
    add("--no-pin", action="store_true", help="do not pin the servers and the load generator")
    add(
        "--no-pin-postgres",
        action="store_true",
        help="leave the database's backends where the scheduler puts them (default: pinned "
        "to the load generator's CPU when the measurement starts)",
    )
    add("--json", type=Path, help="also write every figure to this file")
    add(
        "--ablate-sql",
        action="store_true",
        help="diagnostic: realtime with fixed SQL on raw asyncpg in projects_sql.page "
        "(tests/bench/projects/ablation.py; superseded, it still counts rows: history only)",
    )
    add(
        "--profile",
        type=Path,
        help="after the rounds, one more run of each scenario with py-spy attached to its "
        "server; raw collapsed stacks and a summary go to this folder (not in the tables)",
    )
    return parser


# --- the socket scenario -------------------------------------------------------------------


def page_requests(pages: int, per_page: int = PER_PAGE) -> Callable[[str], bytes]:
    """Request frames for pages 1..`pages` in turn (by the socket's request counter)."""

    def make(req_id: str) -> bytes:
        page = int(req_id) % pages + 1
        return b'{"pkg_id":%d,"req_id":"%s","data":{"page":%d,"per_page":%d}}' % (
            PKG_ID,
            req_id.encode(),
            page,
            per_page,
        )

    return make


def page_check(total: int, per_page: int = PER_PAGE) -> Callable[[dict[str, Any]], bool]:
    def check(answer: dict[str, Any]) -> bool:
        meta = answer.get("meta") or {}
        return (
            answer.get("status_code") == 0
            and len(answer.get("data") or ()) == per_page
            and meta.get("total") == total
        )

    return check


# --- the runs ----------------------------------------------------------------------------


class Bench:
    """Both servers, the token and the options: runs one scenario at a time."""

    def __init__(
        self, args: argparse.Namespace, token: str, live: int, servers: dict[str, tuple[int, int]]
    ) -> None:
        self.args = args
        self.token = token
        self.live = live
        self.servers = servers  # "realtime"/"fastapi" -> (pid, port)
        self.pinned = not args.no_pin
        self.pin_postgres = 1 if self.pinned and not args.no_pin_postgres else None
        self.database = database.database_name(args.database_url)

    def server_of(self, scenario: str) -> tuple[int, int]:
        return self.servers["fastapi" if scenario == "fastapi" else "realtime"]

    def probes(self, scenario: str) -> dict[str, Probe]:
        pid, _ = self.server_of(scenario)
        probes: dict[str, Probe] = {
            SERVER_CPU: ProcessCPU(pid),
            POSTGRES_CPU: PostgresCPU(self.database, pin=self.pin_postgres),
        }
        if self.pinned:
            probes |= {"core 0 busy": CoreBusy(0), "core 1 busy": CoreBusy(1)}
        return probes

    async def run(self, scenario: str, round_: int, extra: dict[str, Probe] | None = None) -> Row:
        probes = {**self.probes(scenario), **(extra or {})}
        if scenario == "socket":
            return await self._socket(round_, probes)
        return await asyncio.to_thread(self._http, scenario, round_, probes)

    async def _socket(self, round_: int, probes: dict[str, Probe]) -> Row:
        _, port = self.server_of("socket")
        workload = Workload(
            name="socket",
            url=f"ws://127.0.0.1:{port}/ws",
            make_request=page_requests(self.args.pages),
            check=page_check(self.live),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        options = LoadOptions(
            connections=self.args.ws_connections,
            pipeline=self.args.pipeline,
            warmup=self.args.warmup,
            duration=self.args.duration,
        )
        result = await run_request_reply(workload, options, probes, round_=round_)
        return Row.from_socket(result)

    def _http(self, scenario: str, round_: int, probes: dict[str, Probe]) -> Row:
        _, port = self.server_of(scenario)
        url = f"http://127.0.0.1:{port}/projects"

        def run(seconds: float) -> http_load.WrkResult:
            return http_load.run_wrk(
                url,
                self.token,
                connections=self.args.http_connections,
                duration=seconds,
                pages=self.args.pages,
            )

        if self.args.warmup > 0:
            run(self.args.warmup)
        for probe in probes.values():
            probe.start()
        measured = run(self.args.duration)
        shares = {name: probe.stop() for name, probe in probes.items()}
        return Row.from_wrk(scenario, round_, self.args.http_connections, measured, shares)


def check_parity(bench: Bench) -> None:
    """Both servers answer the same page (ids, names, meta) for the same token."""
    for page in (1, 2, bench.args.pages):
        bodies = []
        for name in ("realtime", "fastapi"):
            _, port = bench.servers[name]
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/projects?page={page}&per_page={PER_PAGE}",
                headers={"Authorization": f"Bearer {bench.token}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                body = orjson.loads(response.read())
            items = [(p["id"], p["name"], p["description"], p["is_deleted"]) for p in body["data"]]
            bodies.append((items, body["meta"]))
        if bodies[0] != bodies[1]:
            raise SystemExit(f"the two servers disagree on page {page}: {bodies}")
        items, meta = bodies[0]
        if len(items) != PER_PAGE or meta["total"] != bench.live:
            raise SystemExit(f"unexpected page {page}: {len(items)} items, meta {meta}")


async def _bench(bench: Bench) -> list[Row]:
    args = bench.args
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios: {unknown}; known: {', '.join(SCENARIOS)}")
    rows: list[Row] = []
    header = results.runs_table([], list(bench.probes("rest"))).splitlines()[0]
    print(header, flush=True)
    for round_ in range(1, args.rounds + 1):
        for name in names:
            row = await bench.run(name, round_)
            rows.append(row)
            print(results.runs_table([row]).splitlines()[-1], flush=True)
            await asyncio.sleep(0.5)  # let the server close the last run's connections
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        for name in names:
            output = args.profile / f"{name}.collapsed.txt"
            spy = PySpy(bench.server_of(name)[0], args.duration, output)
            row = await bench.run(name, 0, {"py-spy": spy})
            row.scenario += " (py-spy)"
            print(results.runs_table([row]), flush=True)
            with contextlib.suppress(OSError):
                summary = profile_summary(output)
                (args.profile / f"{name}.summary.txt").write_text(summary + "\n")
                print(f"py-spy {name}: {output}\n" + "\n".join(summary.splitlines()[:24]))
    return rows


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "realtime", "handlers", "schema"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    changed = [line[3:] for line in dirty if line.strip()]
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": commit + (f" + uncommitted changes to {', '.join(changed)}" if changed else ""),
    }


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["uvicorn", "uvloop", "httptools", "starlette", "fastapi", "sqlmodel"]
    names += ["sqlalchemy", "databases", "asyncpg", "pydantic", "joserfc", "picows"]
    found = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    wrk = subprocess.run([http_load.wrk_path(), "-v"], capture_output=True, text=True)
    return ", ".join([*found, (wrk.stdout or wrk.stderr).split(" [")[0].strip()])


def _server_env(args: argparse.Namespace, key_file: str) -> tuple[dict[str, str], dict[str, str]]:
    realtime_env = {
        "DATABASE_URL": args.database_url,
        "REALTIME_DEV_KEY_FILE": key_file,
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_RATE_LIMIT": "1000000000",
        "REALTIME_RATE_BURST": "1000000000",
        "REALTIME_MAX_INFLIGHT": "1024",
        "REALTIME_SEND_QUEUE": "4096",
        "REALTIME_DB_POOL_SIZE": str(args.pool_size),
        "REALTIME_LOG_LEVEL": "warning",
        "REDIS_URL": "",  # in-process bus, whatever the caller's environment says
        "KEYCLOAK_ISSUER": "",  # the development issuer
    }
    fastapi_env = {
        "BENCH_DATABASE_URL": args.database_url,
        "BENCH_DEV_KEY_FILE": key_file,
        "BENCH_POOL_SIZE": str(args.pool_size),
    }
    return realtime_env, fastapi_env


def main() -> int:
    args = _parser().parse_args()
    http_load.wrk_path()
    machine = _machine()
    seeded = asyncio.run(database.prepare(args.database_url))
    print(f"migrated and seeded {args.database_url}: {seeded}", flush=True)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    args.no_pin = not pin
    with tempfile.TemporaryDirectory(prefix="realtime-bench-projects-") as tmp:
        key_file = str(Path(tmp) / "dev-key.json")
        issuer = DevIssuer.load_or_create(key_file, audience="realtime", client_id="realtime")
        token = issuer.mint("bench-user", ["user"], tenant=database.TENANT, ttl=24 * 3600)
        realtime_env, fastapi_env = _server_env(args, key_file)
        cpu = 0 if pin else None
        realtime_factory = ABLATED_FACTORY if args.ablate_sql else REALTIME_FACTORY
        with (
            bench_server(realtime_env, cpu=cpu, factory=realtime_factory) as realtime_server,
            bench_server(fastapi_env, cpu=cpu, factory=FASTAPI_FACTORY) as fastapi_server,
        ):
            if pin:
                os.sched_setaffinity(0, {1})
            servers = {"realtime": realtime_server, "fastapi": fastapi_server}
            bench = Bench(args, token, seeded.live, servers)
            check_parity(bench)
            print(
                f"realtime pid {realtime_server[0]} port {realtime_server[1]}, fastapi pid "
                f"{fastapi_server[0]} port {fastapi_server[1]}{' (both on CPU 0)' if pin else ''}; "
                f"load generator pid {os.getpid()}{' (CPU 1)' if pin else ''}, socket client "
                f"{client_kind()} {args.ws_connections}x{args.pipeline} in flight, wrk "
                f"{args.http_connections} connections; {args.warmup:g} s warm-up + "
                f"{args.duration:g} s measured, {args.rounds} rounds, pages 1-{args.pages} "
                f"of {PER_PAGE}, pool {args.pool_size}, postgres backends "
                f"{'on CPU 1' if bench.pin_postgres is not None else 'not pinned'}; python {machine['python']}, nproc "
                f"{machine['nproc']}; code {machine['git']}\n{_versions()}"
                + ("\nDIAGNOSTIC: realtime runs with --ablate-sql" if args.ablate_sql else ""),
                flush=True,
            )
            started = time.monotonic()
            rows = asyncio.Runner(loop_factory=_loop_factory()).run(_bench(bench))
            elapsed = time.monotonic() - started

    print("\nall runs:")
    print(results.runs_table(rows))
    print("\nmedians over rounds:")
    print(results.summary_table(rows))
    ratios = [results.ratio(rows, top, bottom) for top, bottom, _ in TARGETS]
    for info, (_, _, target) in zip(ratios, TARGETS, strict=True):
        print(results.ratio_line(info, target))
    print(results.ceilings(rows))
    print(
        "server/postgres us/req: CPU time per answered request of the server process and of "
        "the database's backends; CPU shares are of one core over the measured window."
    )
    print(f"total {elapsed:.0f} s")
    if args.json:
        document = {
            "runs": [row.summary() for row in rows],
            "ratios": ratios,
            "machine": machine,
            "args": vars(args),
        }
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

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
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.bench.common import ROOT
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
from tests.bench.loadgen import LoadOptions, Workload, client_kind, run_request_reply
from tests.bench.projects import database, http_load, results
from tests.bench.projects.probes import PostgresCPU
from tests.bench.projects.profiling import profile_summary
from tests.bench.projects.results import POSTGRES_CPU, SERVER_CPU, Row
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
        probes = cpu_probes({SERVER_CPU: pid}, self.pinned)
        # after the server's CPU, before the cores: the columns' order of the tables
        return {
            SERVER_CPU: probes.pop(SERVER_CPU),
            POSTGRES_CPU: PostgresCPU(self.database, pin=self.pin_postgres),
            **probes,
        }

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


def _bench(bench: Bench, names: list[str]) -> list[Row]:
    """The rounds (socket, rest, fastapi, socket, ...) on one event loop, then with
    `--profile` one more run of each scenario with py-spy on its server."""
    args = bench.args
    with event_loop() as loop:
        rows = alternate(
            args.rounds,
            names,
            lambda name, round_: loop.run(bench.run(name, round_)),
            results.runs_table,
            # let the server close the last run's connections
            after=lambda: loop.run(asyncio.sleep(0.5)),
        )
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name in names:
                output = args.profile / f"{name}.collapsed.txt"
                spy = PySpy(bench.server_of(name)[0], args.duration, output)
                row = loop.run(bench.run(name, 0, {"py-spy": spy}))
                row.scenario += " (py-spy)"
                print(results.runs_table([row]), flush=True)
                with contextlib.suppress(OSError):
                    summary = profile_summary(output)
                    (args.profile / f"{name}.summary.txt").write_text(summary + "\n")
                    print(f"py-spy {name}: {output}\n" + "\n".join(summary.splitlines()[:24]))
    return rows


VERSIONS = (
    *("uvicorn", "uvloop", "httptools", "starlette", "fastapi", "sqlmodel"),
    *("sqlalchemy", "databases", "asyncpg", "pydantic", "joserfc", "picows"),
)


def _wrk_version() -> str:
    wrk = subprocess.run([http_load.wrk_path(), "-v"], capture_output=True, text=True)
    return (wrk.stdout or wrk.stderr).split(" [")[0].strip()


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
    parser = _parser()
    args = parser.parse_args()
    try:
        names = pick(args.scenarios, SCENARIOS)
    except ValueError as error:
        parser.error(str(error))
    http_load.wrk_path()
    machine = machine_probe.probe()
    machine["versions"]["wrk"] = _wrk_version()
    seeded = asyncio.run(database.prepare(args.database_url))
    print(f"migrated and seeded {args.database_url}: {seeded}", flush=True)
    pin = pinning(args.no_pin)
    args.no_pin = not pin
    with tempfile.TemporaryDirectory(prefix="realtime-bench-projects-") as tmp:
        key_file = str(Path(tmp) / "dev-key.json")
        users = {"bench-user": ["user"]}
        token = dev_tokens(key_file, users, tenant=database.TENANT)["bench-user"]
        realtime_env, fastapi_env = _server_env(args, key_file)
        cpu = 0 if pin else None
        realtime_factory = ABLATED_FACTORY if args.ablate_sql else REALTIME_FACTORY
        with (
            bench_server(realtime_env, cpu=cpu, factory=realtime_factory) as realtime_server,
            bench_server(fastapi_env, cpu=cpu, factory=FASTAPI_FACTORY) as fastapi_server,
        ):
            if pin:
                pin_self(1)
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
                f"{'on CPU 1' if bench.pin_postgres is not None else 'not pinned'}; "
                f"{machine_probe.describe(machine, (*VERSIONS, 'wrk'))}"
                + ("\nDIAGNOSTIC: realtime runs with --ablate-sql" if args.ablate_sql else ""),
                flush=True,
            )
            started = time.monotonic()
            rows = _bench(bench, names)
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
    document = {
        "runs": [row.summary() for row in rows],
        "ratios": ratios,
        "machine": machine,
        "args": vars(args),
    }
    write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())

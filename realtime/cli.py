"""`realtime`: a thin layer over Settings, the app factory and uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from realtime.exceptions import ConfigError
from realtime.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.program = argv is None  # run as the program (not called from Python)
    try:
        settings = Settings.from_env()
        return int(args.command(settings, args))
    except ConfigError as error:
        print(f"realtime: configuration error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server on uvicorn")
    serve.add_argument("--host", help="bind address (REALTIME_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (REALTIME_PORT, default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--reload", action="store_true", help="restart on code changes")
    serve.set_defaults(command=_serve)

    token = commands.add_parser("token", help="print a token from the development issuer")
    token.add_argument("--sub", required=True, help="subject (user id)")
    token.add_argument("--roles", default="user", help="comma-separated roles")
    token.add_argument("--tenant", help="tenant id (default: the subject)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(command=_token)

    migrate = commands.add_parser("migrate", help="upgrade the database schema to head")
    migrate.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(command=_migrate)

    worker = commands.add_parser("worker", help="run jobs from the Redis queue (REDIS_URL)")
    worker.add_argument(
        "--concurrency", type=int, help="jobs run at once (REALTIME_MAX_JOBS, default 30)"
    )
    worker.add_argument(
        "--metrics-port", type=int, help="serve /metrics here (REALTIME_WORKER_METRICS_PORT)"
    )
    worker.set_defaults(command=_worker)

    scheduler = commands.add_parser("scheduler", help="queue the periodic tasks (run one)")
    scheduler.set_defaults(command=_scheduler)

    packages = commands.add_parser("packages", help="print the package table and free ids")
    packages.set_defaults(command=_packages)

    new = commands.add_parser(
        "new-package", help="write a package: handler, schemas, permissions line, test"
    )
    new.add_argument("name", help="dotted name, e.g. notes.add (module handlers/notes.py)")
    new.add_argument("--rest", metavar='"METHOD /path [status]"', help="also serve it over REST")
    new.add_argument("--paginated", action="store_true", help="answer pages (Page, meta)")
    new.add_argument("--roles", default="user", help="comma-separated roles (default user)")
    new.add_argument("--id", type=int, dest="pkg_id", help="package id (default: lowest free)")
    new.add_argument("--audited", action="store_true", help="record each call in the audit log")
    new.set_defaults(command=_new_package)

    topic = commands.add_parser(
        "new-topic", help="write a topic pattern: its authorizer, roles and a test"
    )
    topic.add_argument("pattern", help="e.g. notes.{id} ({name}, {sub}, {tenant}, *)")
    topic.add_argument("--roles", default="user", help="who may subscribe (default user)")
    topic.add_argument("--publish", default="", help="who may publish (default: the server)")
    topic.set_defaults(command=_new_topic)

    types = commands.add_parser(
        "client-types", help="write TypeScript types of every package and event for realtime.js"
    )
    types.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    types.add_argument("--json2ts", help="json-schema-to-typescript's json2ts (default: npx)")
    types.set_defaults(command=_client_types)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if args.program:
        _on_system_malloc()  # may re-execute this process, and so not return
    import uvicorn

    from realtime.app import create_app
    from realtime.bus import in_process
    from realtime.migrate import embedded_at_head, prepare_database

    host, port = args.host or settings.host, args.port or settings.port
    if args.workers > 1 and in_process(settings.bus_url):
        raise ConfigError(
            "--workers needs REDIS_URL: worker processes share topics, "
            "presence and jobs through Redis, not through process memory"
        )
    app = create_app(settings)  # fails here, in one line, on a bad configuration
    if settings.database_url is None and not embedded_at_head(settings):
        _migrate_in_child()
    asyncio.run(prepare_database(settings))
    _announce(settings, host, port)
    options = _uvicorn_options(settings, args, host, port)
    if args.workers > 1 or args.reload:
        # uvicorn's supervisors start their own processes, each building its app from
        # the environment, and run their own servers: sockets get 1012 at shutdown
        with _shared_metrics(args.workers):
            uvicorn.run("realtime.app:create_app", factory=True, **options)
    else:
        config = uvicorn.Config(app, **options)
        _draining_server()(config, app, settings.drain_seconds).run()
    return 0


def _migrate_in_child() -> None:
    """Bring the embedded SQLite file to the code's head in a process of its own
    (`realtime migrate`, same environment): Alembic and Mako (~11 MiB) are loaded there and
    leave with it, never in the serving process (docs/benchmarks.md, Idle memory)."""
    done = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "migrate"], capture_output=True, text=True
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise ConfigError(f"the embedded database could not be migrated:\n{output}")


ALLOCATOR = "PYTHONMALLOC"


def _on_system_malloc() -> None:
    """A server runs on the C library's malloc (PYTHONMALLOC=malloc), not on Python's own
    small-object allocator: pymalloc gives an arena back only when all of it is free, so
    after 2,000 sockets had come and gone the process kept ~60 MiB of them; on malloc,
    with realtime.memory's trim, nearly all of it goes back (docs/benchmarks.md, Soak).
    The variable is read when the interpreter starts, so the process executes itself
    again, once: same PID, same arguments. A PYTHONMALLOC of your own is kept."""
    if os.environ.get(ALLOCATOR) is not None:
        return
    os.environ[ALLOCATOR] = "malloc"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606 - ourselves, same argv


@contextlib.contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """--workers N: the processes write their metrics to one directory, and a scrape of
    any of them answers for all (prometheus-client's multiprocess mode, realtime.metrics).
    A PROMETHEUS_MULTIPROC_DIR of your own is used as it is, and kept."""
    from realtime.metrics import MULTIPROCESS_DIR

    if workers <= 1 or os.environ.get(MULTIPROCESS_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="realtime-metrics-") as directory:
        os.environ[MULTIPROCESS_DIR] = directory  # inherited by the worker processes
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_DIR]


def _announce(settings: Settings, host: str, port: int) -> None:
    """What is really configured, said once at start (as log records in json format, so
    that every line of the output parses)."""
    lines = [
        f"listening on http://{host}:{port} (socket: ws://{host}:{port}/ws)",
        f"database: {_where(settings.database)}; bus and jobs: {_where(settings.bus_url)}",
    ]
    if settings.dev_issuer_enabled:
        lines.append(
            "issuer: the development issuer (no KEYCLOAK_ISSUER). Get a token with:\n"
            "  realtime token --sub alice --roles user --tenant acme\n"
            f"  or POST http://{host}:{port}/auth/login with a user of {settings.dev_users_file}"
        )
    else:
        lines.append(f"issuer: {settings.keycloak_issuer}")
    if settings.log_format == "json":
        import logging.config

        from realtime.logs import log_config

        logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
        for line in lines:
            logging.getLogger("realtime.cli").info(line)
    else:
        print("\n".join(f"realtime: {line}" for line in lines))


def _where(url: str) -> str:
    """A URL as the banner shows it: scheme, host, port and path, never a password."""
    from urllib.parse import urlsplit

    if url.startswith("sqlite"):
        return f"SQLite file {url.split(':///', 1)[1]} (embedded)"
    if url.startswith("memory:"):
        return "in this process (embedded)"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _uvicorn_options(
    settings: Settings, args: argparse.Namespace, host: str, port: int
) -> dict[str, Any]:
    """uvicorn's arguments, the same for one process and for its supervisors."""
    from realtime.logs import log_config

    return {
        "host": host,
        "port": port,
        "workers": args.workers,
        "reload": args.reload,
        "ws_max_size": settings.max_frame_bytes,
        "ws_per_message_deflate": settings.ws_compression,
        "log_config": log_config(settings.log_level, settings.log_format),
        "log_level": settings.log_level,
        # request heads and connections bounded (the app's lifespan gives the limits)
        "http": "realtime.guard:GuardedHttpProtocol",
        # uvicorn's websockets-sansio protocol, holding less per idle socket
        "ws": "realtime.socket.wsprotocol:LeanWebSocketProtocol",
    }


def _draining_server() -> Any:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, drain the sockets (server.draining, then 1001) before
        uvicorn's own shutdown would close them with 1012."""

        def __init__(self, config: uvicorn.Config, app: Any, grace: float) -> None:
            super().__init__(config)
            self._app = app
            self._grace = grace

        async def shutdown(self, sockets: Any = None) -> None:
            services = getattr(self._app.state, "services", None)
            if services is not None:
                await services.drain(self._grace)
            await super().shutdown(sockets)

    return DrainingServer


def _token(settings: Settings, args: argparse.Namespace) -> int:
    if not settings.dev_issuer_enabled:
        raise ConfigError(
            "KEYCLOAK_ISSUER is set: the development issuer is off; get a token from Keycloak"
        )
    from realtime.lifespan import dev_issuer

    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    print(dev_issuer(settings).mint(args.sub, roles, tenant=args.tenant, ttl=args.ttl))
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.migrate import head_revision, upgrade

    applied = upgrade(settings, args.revision, sql=args.sql)
    if args.sql:  # stdout is the SQL script: nothing else may be written to it
        return 0
    for migration in applied:
        print(f"realtime: applied {migration}", flush=True)
    target = head_revision(settings) if args.revision == "head" else args.revision
    if applied:
        print(f"realtime: database migrated to revision {target}", flush=True)
    else:
        print(f"realtime: database already at revision {target}: nothing to apply", flush=True)
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.app import load_handlers
    from realtime.jobs.worker import run_worker
    from realtime.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    tasks = load_handlers(settings.handlers)[1]
    if args.metrics_port is not None:
        settings = settings.replace(worker_metrics_port=args.metrics_port)
    return asyncio.run(run_worker(settings, tasks, args.concurrency or settings.max_jobs))


def _scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.app import load_handlers
    from realtime.jobs.worker import run_scheduler
    from realtime.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_scheduler(settings, load_handlers(settings.handlers)[1]))
    return 0


def _catalog(settings: Settings) -> Any:
    from realtime.app import load_handlers
    from realtime.builtin import catalog

    return catalog(load_handlers(settings.handlers)[0])


def _client_types(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.clienttypes import generate

    source = generate(_catalog(settings), args.json2ts)
    if args.output == "-":
        sys.stdout.write(source)
    else:
        Path(args.output).write_text(source)
        print(f"realtime: wrote {args.output}", file=sys.stderr)
    return 0


def _packages(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.permissions import Permissions

    catalog = _catalog(settings)
    permissions = Permissions.load(settings.permissions_file)
    row = "{:>4}  {:<24} {:<14} {:<8} {:<7} {:<9} {:<7} {}"
    print(row.format("id", "name", "roles", "transport", "runs", "paginated", "audited", "rest"))
    unlisted = []
    for p in catalog:
        roles = ",".join(sorted(permissions.package_roles(p.name)))
        if not roles and p.name not in permissions.packages:
            unlisted.append(p.name)
        rest = f"{p.rest.method} {p.rest.path}" if p.rest else "-"
        transport = "ws+rest" if p.rest else "ws"
        paginated = "yes" if p.paginated else "-"
        audited = "yes" if p.audited else "-"
        roles = roles or "(nobody)"
        print(row.format(p.id, p.name, roles, transport, p.runs, paginated, audited, rest))
    free = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in catalog.free_ids())
    print(f"\nfree application ids: {free} (9000-9999 and 42 are the framework's)")
    for name in unlisted:
        print(f"not in {settings.permissions_file}: {name} (nobody may call it)")
    return 0


def _new_package(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.scaffold import Project, ScaffoldError, next_steps, plan, write

    project = Project(Path.cwd(), settings.handlers[0], settings.permissions_file)
    sys.path.insert(0, str(project.root))  # this project's handlers, whatever is installed
    try:
        project.check()
        spec = plan(
            _catalog(settings),
            args.name,
            rest=args.rest,
            paginated=args.paginated,
            roles=args.roles,
            pkg_id=args.pkg_id,
            served=_served_routes(settings),
            audited=args.audited,
        )
        written = write(project, spec)
    except ScaffoldError as error:
        print(f"realtime new-package: {error}", file=sys.stderr)
        return 2
    print("\n".join([*written, *next_steps(spec)]))
    return 0


def _served_routes(settings: Settings) -> list[tuple[frozenset[str] | None, str]]:
    """Every route the app serves (/health, /packages, the ROUTES of handler modules...;
    packages' own too, which the catalog names first)."""
    from starlette.routing import Route

    from realtime.app import create_app

    served: list[tuple[frozenset[str] | None, str]] = []
    for route in create_app(settings).routes:
        path = getattr(route, "path", None)
        if path is None:
            continue
        methods = getattr(route, "methods", None) if isinstance(route, Route) else None
        served.append((frozenset(methods) if methods else None, path))
    return served


def _new_topic(settings: Settings, args: argparse.Namespace) -> int:
    from realtime.app import load_topics
    from realtime.permissions import Permissions
    from realtime.scaffold import Project, ScaffoldError, plan_topic, topic_next_steps, write_topic

    project = Project(Path.cwd(), settings.handlers[0], settings.permissions_file)
    sys.path.insert(0, str(project.root))
    try:
        project.check()
        table = Permissions.load(str(project.permissions)).topics
        declared = [topic.pattern for topic in load_topics(settings.handlers)]
        spec = plan_topic(table, declared, args.pattern, roles=args.roles, publish=args.publish)
        written = write_topic(project, spec)
    except ScaffoldError as error:
        print(f"realtime new-topic: {error}", file=sys.stderr)
        return 2
    print("\n".join([*written, *topic_next_steps(spec)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

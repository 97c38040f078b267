"""Fixtures: settings isolated from the environment, a dev issuer, apps in process and on
a real uvicorn on a free port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import functools
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from realtime.app import create_app, load_handlers
from realtime.auth.dev import DevIssuer
from realtime.logs import log_config
from realtime.migrate import upgrade
from realtime.settings import Settings
from tests.packages import TEST_PACKAGES

HERE = Path(__file__).parent
ROOT = HERE.parent
# the application's packages and tasks, as `realtime serve` finds them
APP_PACKAGES, APP_TASKS = load_handlers(("handlers",))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Defaults only (never the developer's environment or .env), files under tmp_path."""
    files = {
        "dev_key_file": str(tmp_path / "dev-key.json"),
        "permissions_file": str(HERE / "permissions.toml"),
        "dev_users_file": str(ROOT / "dev-users.toml"),
        "embedded_database": str(tmp_path / "embedded.db"),
        "migrations_dir": str(ROOT / "migrations"),
        "handlers": ("handlers", "tests.extra_routes", "tests.failing_jobs"),
    }
    return Settings.from_mapping({}).replace(**{**files, **changes})


def build_app(settings: Settings) -> Starlette:
    return create_app(settings, [*APP_PACKAGES, *TEST_PACKAGES])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def issuer(settings: Settings) -> DevIssuer:
    return DevIssuer.load_or_create(
        settings.dev_key_file,
        audience=settings.keycloak_audience,
        client_id=settings.keycloak_client_id,
    )


@pytest.fixture
def token(issuer: DevIssuer) -> str:
    return issuer.mint("alice", ["user"], tenant="acme")


@pytest.fixture
def admin_token(issuer: DevIssuer) -> str:
    return issuer.mint("root", ["user", "admin"], tenant="acme")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(settings)) as test_client:
        yield test_client


@contextlib.contextmanager
def serve(app: Any, *, ws_max_size: int = 64 * 1024, http: str = "auto") -> Iterator[str]:
    """Run `app` on a real uvicorn on a free port in a thread; yields 'host:port'."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        ws_max_size=ws_max_size,
        log_config=log_config("warning"),
        log_level="warning",
        lifespan="on",
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        ws="realtime.socket.wsprotocol:LeanWebSocketProtocol",  # as `realtime serve` runs
        http=http,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    with serve(build_app(settings), ws_max_size=settings.max_frame_bytes) as address:
        yield address


@pytest.fixture
def issuer_token(tmp_path: Path) -> str:
    """A user token for apps built by the test itself from make_settings(tmp_path, ...)."""
    settings = make_settings(tmp_path)
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    )
    return issuer.mint("alice", ["user"], tenant="acme")


# -- databases: every test that takes `engine` runs on SQLite and on PostgreSQL ---------

PG_SERVER = os.environ.get("REALTIME_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def in_thread(function: Any, *args: Any) -> Any:
    """Run `function(*args)` in a thread of its own: asyncio.run (here and in Alembic's
    env) cannot run in a thread whose loop is running, as Playwright's sync API keeps one
    in the browser tests' thread while a browser is open."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


async def _pg_admin(statement: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/test", timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    name = f"realtime_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        in_thread(asyncio.run, _pg_admin(f'CREATE DATABASE "{name}"'))
    except OSError as error:
        pytest.fail(f"PostgreSQL at {PG_SERVER} cannot be reached: {error}")
    url = f"{PG_SERVER}/{name}"
    in_thread(upgrade, make_settings(tmp_path_factory.mktemp("pg"), database_url=url))
    yield url
    in_thread(asyncio.run, _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        await connection.execute("TRUNCATE projects, authors, jobs, audit_log RESTART IDENTITY")
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on the embedded SQLite default, then on a real (emptied) PostgreSQL."""
    if request.param == "sqlite":
        return make_settings(tmp_path)
    url = request.getfixturevalue("pg_url")
    in_thread(asyncio.run, _truncate(url))
    return make_settings(tmp_path, database_url=url)


@pytest.fixture
def db_client(engine: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(engine)) as test_client:
        yield test_client


# -- the bus: every test that takes `bus` runs in process and on the real Redis ----------

REDIS_SERVER = os.environ.get("REALTIME_TEST_REDIS", "redis://127.0.0.1:6379")
# Tests empty their database between tests, so two runs on one machine (a developer's
# and CI's) must never share one: each run claims a database with a lock file, the first
# of these that no other run holds, and waits for one when all are taken.
REDIS_TEST_DBS = (9, 10, 11, 15)


@functools.cache
def _claimed_db() -> tuple[int, IO[bytes]]:
    """A database no other test run on this machine uses, and the lock that holds it
    (kept open for the whole run, released by the OS when the run ends)."""
    host = urlsplit(REDIS_SERVER).netloc.replace(":", "_")
    locks = [
        (db, Path(tempfile.gettempdir()) / f"realtime-tests-{host}-db{db}.lock")
        for db in REDIS_TEST_DBS
    ]
    for db, path in locks:
        lock = path.open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return db, lock
    db, path = locks[0]
    print(
        f"tests: Redis databases {REDIS_TEST_DBS} are all held by other test runs; waiting for {db}"
    )
    lock = path.open("wb")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return db, lock


def redis_url(server: str = REDIS_SERVER) -> str:
    """The tests' Redis database: the one REALTIME_TEST_REDIS names
    (`redis://host:port/10`), else one of REDIS_TEST_DBS that no other run holds."""
    parts = urlsplit(server)
    if parts.path.strip("/"):
        return server
    return urlunsplit(parts._replace(path=f"/{_claimed_db()[0]}"))


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(redis_url(), socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis at {redis_url()} cannot be reached: {error}")
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis"])
def bus(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on the in-process bus, then on the machine's Redis (test db emptied)."""
    unlimited = {"rate_limit": 1e6, "rate_burst": 10**6, "max_inflight": 1024, "send_queue": 4096}
    if request.param == "memory":
        return make_settings(tmp_path, **unlimited)
    flush_redis()
    return make_settings(tmp_path, redis_url=redis_url(), **unlimited)


@pytest.fixture
def bus_client(bus: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(bus)) as test_client:
        yield test_client

"""Backends come from URLs (`bus.from_url`, `jobs.broker_from_url`, `Settings.bus_url`),
and `create_app(..., bus=, broker=)` serves on injected ones instead."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from taskiq import InMemoryBroker

from realtime.app import create_app
from realtime.auth.dev import DevIssuer
from realtime.bus import Offset, from_url
from realtime.bus.memory import MemoryBackend
from realtime.bus.redis import RedisBackend
from realtime.exceptions import ConfigError
from realtime.jobs import broker_from_url
from realtime.jobs.broker import JobStreamBroker
from realtime.settings import Settings
from tests.conftest import APP_PACKAGES, make_settings
from tests.helpers import auth_header, call
from tests.nodes import free_port, node_env
from tests.packages import TEST_PACKAGES

PUBLISH = 32
KNOWN = "expected one of memory://, redis://, rediss://, unix://"


def app(settings: Settings, **backends: Any) -> Starlette:
    return create_app(settings, [*APP_PACKAGES, *TEST_PACKAGES], None, **backends)


def finished(client: TestClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(250):
        status: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=headers).json()
        if status["state"] not in {"PENDING", "STARTED"}:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {status}")


# -- injected backends ---------------------------------------------------------------


def test_the_app_publishes_on_the_injected_bus(settings: Settings, issuer: DevIssuer) -> None:
    injected = MemoryBackend(settings.stream_retention)
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    with TestClient(app(settings, bus=injected)) as client:
        with client.websocket_connect("/ws", headers=alice) as ws:
            answer = call(ws, PUBLISH, {"topic": "chat.room", "data": {"hi": 1}})
        assert client.portal is not None
        history = client.portal.call(injected.history, "chat.room", Offset.start())
    assert answer["status_code"] == 0 and answer["data"]["offset"] == str(history.top)
    assert [orjson.loads(event.data) for event in history.events] == [{"hi": 1}]


def test_injected_backends_replace_those_the_settings_name(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    """The settings name a Redis where nothing listens: served all the same, the job run
    in process by the injected broker, so nothing used the URL."""
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    bus, broker = MemoryBackend(settings.stream_retention), InMemoryBroker()
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    with TestClient(app(settings, bus=bus, broker=broker)) as client:
        started = client.post("/jobs", json={"total_steps": 2, "step_seconds": 0.01}, headers=alice)
        assert started.status_code == 202, started.text
        status = finished(client, started.json()["job_id"], alice)
        ready = client.get("/ready")
    assert status["state"] == "SUCCESS"
    assert [result.is_err for result in broker.result_backend.results.values()] == [False]
    assert ready.status_code == 200, ready.json()


# -- from_url and broker_from_url ----------------------------------------------------


def test_settings_name_memory_unless_redis_url(tmp_path: Path) -> None:
    assert make_settings(tmp_path).bus_url == "memory://"
    url = "rediss://:secret@redis.internal:6380/2"
    assert make_settings(tmp_path, redis_url=url).bus_url == url


def test_memory_url_is_the_memory_backend(settings: Settings) -> None:
    assert isinstance(from_url("memory://", settings), MemoryBackend)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.internal:6380", "unix:///run/r.sock"]
)
async def test_redis_urls_are_the_redis_backend(settings: Settings, url: str) -> None:
    backend = from_url(url, settings)  # connects only when used
    assert isinstance(backend, RedisBackend)
    await backend.close()


def test_an_unknown_scheme_is_a_config_error_naming_the_known_ones(settings: Settings) -> None:
    with pytest.raises(ConfigError) as error:
        from_url("kafka://user:secret@broker:9092", settings)
    assert str(error.value) == f"unknown URL scheme 'kafka://' for the bus: {KNOWN}"
    with pytest.raises(ConfigError) as error:
        from_url("localhost:6379", settings)
    assert str(error.value) == f"no scheme in the URL for the bus: {KNOWN}"


def test_redis_url_of_an_unknown_scheme_stops_start_up() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_mapping({"REDIS_URL": "http://:secret@redis:6379"})
    assert str(error.value) == f"REDIS_URL: unknown URL scheme 'http://' for the bus: {KNOWN}"


def test_the_embedded_default_never_loads_redis() -> None:
    """The app, its CLI, the memory bus and the in-process broker: no redis module."""
    script = (
        "import sys\n"
        "import realtime.app, realtime.cli\n"
        "from realtime.bus import from_url\n"
        "from realtime.jobs import broker_from_url\n"
        "from realtime.settings import Settings\n"
        "from_url('memory://', Settings())\n"
        "broker_from_url('memory://', Settings())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'taskiq_redis')"
        " or m == 'realtime.bus.redis'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_embedded_default_serves_without_alembic_httpx_or_asyncpg(tmp_path: Path) -> None:
    """Once its SQLite file is at head (`realtime serve` migrates a new one in a child
    process), the app starts and verifies a dev token without loading Alembic (nor
    Mako), httpx or asyncpg: only Keycloak, PostgreSQL and migrating need them."""
    migrate = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "migrate"],
        env={**node_env(tmp_path), "REALTIME_EMBEDDED_DB": str(tmp_path / "e.db")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    script = (
        "import asyncio, sys\n"
        "from realtime.app import create_app\n"
        "from realtime.settings import Settings\n"
        "async def main():\n"
        "    app = create_app(Settings.from_env())\n"
        "    async with app.router.lifespan_context(app):\n"
        "        services = app.state.services\n"
        "        token = services.dev_issuer.mint('alice', ['user'], tenant='acme', ttl=60)\n"
        "        print((await services.verifier.verify(token)).sub)\n"
        "asyncio.run(main())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'alembic', 'mako', 'httpx', 'asyncpg'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**node_env(tmp_path), "REALTIME_EMBEDDED_DB": str(tmp_path / "e.db")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["alice", "[]"]


def test_broker_urls(settings: Settings) -> None:
    assert isinstance(broker_from_url("memory://", settings), InMemoryBroker)
    assert isinstance(broker_from_url("redis://127.0.0.1:6379/0", settings), JobStreamBroker)
    with pytest.raises(ConfigError) as error:
        broker_from_url("amqp://guest@rabbit", settings)
    assert str(error.value) == f"unknown URL scheme 'amqp://' for the job queue: {KNOWN}"

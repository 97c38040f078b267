"""The database layer: migrations, the schema check, outages and timeouts (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from starlette.testclient import TestClient

from realtime.app import create_app
from realtime.exceptions import ConfigError
from realtime.migrate import (
    alembic_config,
    embedded_at_head,
    head_revision,
    prepare_database,
    script_heads,
)
from realtime.settings import Settings
from tests.conftest import APP_PACKAGES, PG_SERVER, ROOT, _pg_admin, build_app, make_settings
from tests.helpers import auth_header, call
from tests.proxy import running_proxy


def test_tables_and_migrations_agree(engine: Settings) -> None:
    """alembic check: autogenerate finds nothing the migrations do not already do."""
    if engine.database_url is None:
        with TestClient(build_app(engine)):  # the embedded default migrates at start-up
            pass
    command.check(alembic_config(engine))


def test_migrate_sql_prints_the_ddl(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "migrate", "--sql"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "CREATE TABLE projects" in done.stdout and "CREATE TABLE authors" in done.stdout
    assert "INSERT INTO alembic_version" in done.stdout


def test_the_heads_read_from_the_revision_files_are_alembics(tmp_path: Path) -> None:
    """The start-up check reads the head from the files' literals, without Alembic; it
    says None (ask Alembic) for a file it cannot read that way."""
    settings = make_settings(tmp_path)
    alembic_head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    assert script_heads(settings.migrations_dir) == {alembic_head}
    assert head_revision(settings) == alembic_head
    versions = tmp_path / "migrations" / "versions"
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    branch = "revision = 'b1'\ndown_revision: str | None = '0005'\n"
    (versions / "b1_branch.py").write_text(branch)
    assert script_heads(str(tmp_path / "migrations")) == {alembic_head, "b1"}
    (versions / "b2_computed.py").write_text("revision = 'b' + '2'\ndown_revision = 'b1'\n")
    assert script_heads(str(tmp_path / "migrations")) is None


def test_the_embedded_file_is_at_head_once_migrated(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert not embedded_at_head(settings)  # no file yet
    asyncio.run(prepare_database(settings))
    assert embedded_at_head(settings)
    with contextlib.closing(sqlite3.connect(settings.embedded_database)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0005'")
        connection.commit()
        assert not embedded_at_head(settings)  # behind: Alembic will upgrade it
        connection.execute("DROP TABLE alembic_version")
        connection.commit()
        assert not embedded_at_head(settings)  # not an Alembic database (yet)


@pytest.fixture
def empty_pg_url() -> str:
    name = f"realtime_empty_{os.getpid()}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"{PG_SERVER}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_server_refuses_a_schema_behind_then_serves_after_migrate(
    tmp_path: Path, empty_pg_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=empty_pg_url)
    with pytest.raises(ConfigError, match="run `realtime migrate`"):
        asyncio.run(prepare_database(settings))
    env = {
        **os.environ,
        "DATABASE_URL": empty_pg_url,
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
    }
    serve = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert serve.returncode == 2
    assert serve.stderr.strip().splitlines()[-1] == (
        "realtime: configuration error: DATABASE_URL: the schema is at revision none, "
        "the code needs 0006: run `realtime migrate`"
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    asyncio.run(prepare_database(settings))  # now it passes


def test_unreachable_database_stops_start_up_in_one_line(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, database_url="postgresql://postgres@127.0.0.1:1/x", db_timeout=1.0
    )
    with pytest.raises(ConfigError, match="DATABASE_URL: cannot connect to the database"):
        asyncio.run(prepare_database(settings))


def test_database_outage_is_unavailable_and_the_rest_keeps_serving(
    tmp_path: Path, pg_url: str, issuer_token: str
) -> None:
    with running_proxy(pg_url) as proxy:
        url = proxy.url(pg_url)
        settings = make_settings(tmp_path, database_url=url, db_timeout=1.0)
        headers = auth_header(issuer_token)
        with TestClient(create_app(settings, build_app_packages())) as client:
            assert client.get("/projects", headers=headers).status_code == 200
            proxy.cut()
            down = client.get("/projects", headers=headers)
            assert down.status_code == 503 and down.headers["retry-after"] == "2"
            assert down.json() == {
                "status_code": 9,
                "error": {"message": "the database is unavailable", "details": {"retry_after": 2}},
            }
            with client.websocket_connect("/ws", headers=headers) as ws:
                assert call(ws, 11, {})["status_code"] == 9
                assert call(ws, 40, {"still": "serving"})["data"] == {"still": "serving"}
            not_ready = client.get("/ready")
            assert not_ready.status_code == 503
            assert not_ready.json() == {
                "status": "not ready",
                "checks": {"database": False, "bus": True},
            }
            assert client.get("/health").status_code == 200
            proxy.restore()
            assert client.get("/ready").status_code == 200
            assert client.get("/projects", headers=headers).status_code == 200


def test_slow_query_is_cut_by_the_statement_timeout(
    tmp_path: Path, pg_url: str, issuer_token: str
) -> None:
    settings = make_settings(tmp_path, database_url=pg_url, db_timeout=0.5)
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=auth_header(issuer_token)) as ws,
    ):
        answer = call(ws, 912, {"seconds": 5})
        assert answer["status_code"] == 9
        assert answer["error"]["message"] == "the database timed out"
        assert call(ws, 912, {"seconds": 0})["status_code"] == 0  # the pool is healthy


def test_failed_writes_leave_the_pool_healthy_and_shutdown_prompt(
    tmp_path: Path, pg_url: str, issuer: object
) -> None:
    from realtime.auth.dev import DevIssuer

    assert isinstance(issuer, DevIssuer)
    admin = auth_header(issuer.mint("root", ["user", "admin"]))
    settings = make_settings(tmp_path, database_url=pg_url, db_pool_size=2)
    client = TestClient(build_app(settings))
    with client:
        assert client.post("/authors", json={"name": "Dup"}, headers=admin).status_code == 201
        codes = {
            client.post("/authors", json={"name": "Dup"}, headers=admin).status_code
            for _ in range(20)
        }
        assert codes == {409}
        assert client.get("/authors", headers=admin).status_code == 200
    # leaving the block ran the lifespan's disconnect: a leaked connection would hang here


def build_app_packages() -> list:  # type: ignore[type-arg]
    from tests.packages import TEST_PACKAGES

    return [*APP_PACKAGES, *TEST_PACKAGES]

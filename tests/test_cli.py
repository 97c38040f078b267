"""The `realtime` command as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import ROOT, build_app, make_settings
from tests.helpers import auth_header


def realtime(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "KEYCLOAK_"))}
    environ |= {
        "REALTIME_DEV_KEY_FILE": str(tmp_path / "key.json"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_is_accepted_by_the_server(tmp_path: Path) -> None:
    done = realtime(
        tmp_path,
        "token",
        "--sub",
        "dana",
        "--roles",
        "user,admin",
        "--tenant",
        "t9",
        "--ttl",
        "120",
    )
    assert done.returncode == 0 and done.stderr == ""
    settings = make_settings(tmp_path, dev_key_file=str(tmp_path / "key.json"))
    with TestClient(build_app(settings)) as client:
        me = client.get("/me", headers=auth_header(done.stdout.strip())).json()
    assert me["sub"] == "dana" and me["tenant_id"] == "t9"
    assert me["roles"] == ["admin", "user"]
    assert 110 <= me["expires_at"] - int(os.path.getmtime(tmp_path / "key.json")) <= 200


def test_token_is_refused_when_keycloak_is_configured(tmp_path: Path) -> None:
    done = realtime(tmp_path, "token", "--sub", "x", KEYCLOAK_ISSUER="http://kc/realms/r")
    assert done.returncode == 2 and done.stdout == ""
    assert "KEYCLOAK_ISSUER is set: the development issuer is off" in done.stderr


def test_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    done = realtime(tmp_path, "serve", REALTIME_PORT="http")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "realtime: configuration error: REALTIME_PORT: expected an integer, got 'http'"
    ]


def test_bad_permissions_stop_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text('[packages]\n"gone" = ["user"]\n')
    done = realtime(tmp_path, "serve", "--port", "1", REALTIME_PERMISSIONS=str(tmp_path / "p.toml"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "realtime: configuration error: permissions: entries name no package: gone"
    )


def test_packages_table(tmp_path: Path) -> None:
    done = realtime(tmp_path, "packages")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    header = ["id", "name", "roles", "transport", "runs", "paginated", "audited", "rest"]
    assert lines[0].split() == header
    rows = [line.split() for line in lines[1:]]
    assert ["40", "echo", "user", "ws", "inline", "-", "-", "-"] in rows
    assert ["41", "me", "user", "ws+rest", "inline", "-", "-", "GET", "/me"] in rows
    assert ["42", "auth.refresh", "*", "ws", "task", "-", "-", "-"] in rows
    assert ["24", "jobs.list", "user", "ws+rest", "task", "yes", "-", "GET", "/jobs"] in rows
    assert ["10", "projects.create", "user", "ws+rest", "task", "-", "yes", "POST", "/projects"] in rows
    assert any(line.startswith("free application ids: 4-9, 15-19") for line in lines)
    assert not any(line.startswith("not in ") for line in lines)  # every package has roles


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def test_serve_runs_on_the_system_malloc_in_the_same_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`realtime serve` executes itself again with PYTHONMALLOC=malloc (pymalloc kept the
    memory of sockets long gone: realtime.cli._on_system_malloc): the same PID serves."""
    from tests.nodes import node

    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    with node(tmp_path) as server:
        assert _environ(server.process.pid).get("PYTHONMALLOC") == "malloc"
        assert httpx.get(f"http://{server.address}/health").json() == {"status": "ok"}


def test_a_pythonmalloc_of_your_own_is_kept(tmp_path: Path) -> None:
    from tests.nodes import node

    with node(tmp_path, PYTHONMALLOC="pymalloc") as server:
        assert _environ(server.process.pid).get("PYTHONMALLOC") == "pymalloc"

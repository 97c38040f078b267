"""/openapi.json: generated from the packages, fuzzed by schemathesis, typed by openapi-typescript."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from realtime.app import create_app
from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import APP_PACKAGES, ROOT, serve
from tests.npmtools import run_tool


def test_document_describes_the_rest_mount(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    create = spec["paths"]["/projects"]["post"]
    assert create["operationId"] == "projects.create" and create["x-pkg-id"] == 10
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["name"]
    assert set(create["responses"]) >= {"201", "401", "403", "409", "422", "429", "503"}
    listing = spec["paths"]["/projects"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["per_page"]["schema"]["maximum"] == 100 and params["per_page"]["in"] == "query"
    page = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert page["properties"]["meta"] == {"$ref": "#/components/schemas/Meta"}
    patch = spec["paths"]["/projects/{id}"]["patch"]
    assert [p["name"] for p in patch["parameters"]] == ["id"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "id" not in body["properties"]
    assert spec["paths"]["/auth/login"]["post"]["security"] == []
    assert "swagger-ui" in client.get("/docs").text


@pytest.fixture
def live(engine: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The real app (default packages and permissions) on uvicorn, with an admin token."""
    settings = engine.replace(
        permissions_file=str(ROOT / "permissions.toml"), rate_limit=1e6, rate_burst=10**6
    )
    token = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    ).mint("root", ["user", "admin"])
    with serve(create_app(settings, APP_PACKAGES)) as address:
        yield address, token


METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def declared_operations(address: str) -> int:
    """The operations the app's own document declares: what schemathesis must test."""
    spec = httpx.get(f"http://{address}/openapi.json").json()
    return sum(method in METHODS for item in spec["paths"].values() for method in item)


def schemathesis(address: str, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """schemathesis with its default checks (none excluded) against a running app."""
    st = Path(sys.executable).parent / "schemathesis"
    return subprocess.run(
        [
            str(st),
            "run",
            f"http://{address}/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "25",
            "--seed",
            "7",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )


def test_schemathesis_finds_nothing(live: tuple[str, str], tmp_path: Path) -> None:
    address, token = live
    done = schemathesis(address, token, tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"Tested: {declared_operations(address)}" in done.stdout


def test_frontend_types_generate_with_openapi_typescript(
    client: TestClient, tmp_path: Path
) -> None:
    (tmp_path / "openapi.json").write_text(json.dumps(client.get("/openapi.json").json()))
    done = run_tool("openapi-typescript", "openapi.json", "-o", "api.d.ts", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    types = (tmp_path / "api.d.ts").read_text()
    assert '"/projects/{id}"' in types and "per_page?: number" in types
    assert '"projects.create"' in types
    # the generated file type-checks
    checked = run_tool("tsc", "--noEmit", "--strict", "api.d.ts", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_health_is_public(live: tuple[str, str]) -> None:
    address, _ = live
    assert httpx.get(f"http://{address}/health").json() == {"status": "ok"}

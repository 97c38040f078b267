"""Issue 11, item 14: the REST semantics schemathesis checks.

- Following the README's "Add a package" broke test_openapi, which expected exactly 16
  operations: it now counts what the app's document declares; here with the README's
  `notes.add` added, schemathesis tests one operation more and finds nothing.
- `DELETE /jobs/{id}` kept the record (a later GET answered 200), which schemathesis's
  default `use_after_free` check rightly reports: a cancel is `POST /jobs/{id}/cancel`,
  and no check is excluded any more.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from realtime import Context, Package, Rest
from realtime.app import create_app, load_handlers
from realtime.auth.dev import DevIssuer
from tests.conftest import ROOT, make_settings, serve
from tests.test_openapi import METHODS, declared_operations, schemathesis

NOTE = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 500}},
    "required": ["text"],
    "additionalProperties": False,
}


async def add_note(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return {"text": data["text"], "by": ctx.principal.sub}


NOTES = [Package(60, "notes.add", add_note, schema=NOTE, rest=Rest("POST", "/notes", 201))]


@pytest.fixture
def with_notes(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The shipped app plus the README's example package and its permission line."""
    permissions = tmp_path / "permissions.toml"
    shipped = (ROOT / "permissions.toml").read_text()
    permissions.write_text(shipped.replace("[packages]\n", '[packages]\n"notes.add" = ["user"]\n'))
    settings = make_settings(
        tmp_path, permissions_file=str(permissions), rate_limit=1e6, rate_burst=10**6
    )
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file, audience="realtime", client_id="realtime"
    )
    token = issuer.mint("root", ["user", "admin"], tenant="acme")
    with serve(create_app(settings, [*load_handlers(("handlers",))[0], *NOTES])) as address:
        yield address, token


def test_an_added_package_is_one_more_operation_tested(
    with_notes: tuple[str, str], tmp_path: Path
) -> None:
    address, token = with_notes
    declared = declared_operations(address)
    # the shipped operations, counted from the shipped app's own document, and POST /notes
    settings = make_settings(tmp_path / "shipped", permissions_file=str(ROOT / "permissions.toml"))
    with TestClient(create_app(settings, load_handlers(("handlers",))[0])) as shipped:
        paths = shipped.get("/openapi.json").json()["paths"]
    assert declared == sum(method in METHODS for item in paths.values() for method in item) + 1
    done = schemathesis(address, token, tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"Tested: {declared}" in done.stdout


def test_a_cancel_is_not_a_delete(with_notes: tuple[str, str]) -> None:
    address, token = with_notes
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"http://{address}", headers=headers) as http:
        job_id = http.post("/jobs", json={"total_steps": 100, "step_seconds": 1}).json()["job_id"]
        cancelled = http.post(f"/jobs/{job_id}/cancel")
        assert (cancelled.status_code, cancelled.json()) == (
            200,
            {"job_id": job_id, "state": "CANCELLED"},
        )
        kept = http.get(f"/jobs/{job_id}")
        assert (kept.status_code, kept.json()["state"]) == (200, "CANCELLED")
        assert http.delete(f"/jobs/{job_id}").status_code == 405  # no DELETE: nothing is deleted
        spec = http.get("/openapi.json").json()["paths"]
        assert "delete" not in spec["/jobs/{job_id}"]
        assert spec["/jobs/{job_id}/cancel"]["post"]["operationId"] == "jobs.cancel"
        # control: the socket's jobs.cancel is the same package, unchanged
        catalog = {p["name"]: p for p in http.get("/packages").json()}
        assert catalog["jobs.cancel"]["rest"] == {"method": "POST", "path": "/jobs/{job_id}/cancel"}
        assert http.get("/me").json()["sub"] == "root"

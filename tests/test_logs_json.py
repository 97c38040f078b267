"""REALTIME_LOG_FORMAT=json on a real `realtime serve` (PostgreSQL and Redis configured):
every line of its output is one JSON object, a request's records carry its fields, no
token appears in any form it was sent in, and the banner names what is configured."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import redis_url
from tests.helpers import ws_call, ws_connect
from tests.nodes import mint, node

AUTHORS_CREATE = 3


async def _use_every_token_form(address: str, token: str) -> dict[str, Any]:
    header = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        assert (await http.get("/me", headers=header)).status_code == 200
        assert (await http.get(f"/me?token={token}")).status_code in (200, 401)
        assert (await http.get(f"/health?access_token={token}&x=1")).status_code == 200
        assert (await http.get("/me", headers={"Authorization": "Bearer x" + token})).status_code == 401
    by_query = await ws_connect(address, f"/ws?token={token}")
    await by_query.close()
    by_protocol = await ws_connect(address, subprotocols=["realtime.v1", f"bearer.{token}"])
    await by_protocol.close()
    first_frame = await ws_connect(address)
    await ws_call(first_frame, 42, {"token": token}, "auth")  # auth.refresh authenticates
    name = f"author-{secrets.token_hex(4)}"
    created = await ws_call(first_frame, AUTHORS_CREATE, {"name": name}, "c1")
    again = await ws_call(first_frame, AUTHORS_CREATE, {"name": name}, "c2")  # CONFLICT
    await first_frame.close()
    return {"created": created, "again": again}


def test_json_lines_with_request_fields_and_no_token(tmp_path: Path, pg_url: str) -> None:
    env = {
        "REALTIME_LOG_FORMAT": "json",
        "REALTIME_LOG_LEVEL": "debug",
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url(),
    }
    token = mint(tmp_path, "alice", roles="user,admin")
    with node(tmp_path, **env) as server:
        answers = asyncio.run(_use_every_token_form(server.address, token))
        output = server.output()
    assert answers["created"]["status_code"] == 0
    assert answers["again"]["status_code"] == 8  # CONFLICT
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records, output
    for record in records:
        assert {"time", "level", "logger", "message", "node"} <= set(record), record
    conflict = next(r for r in records if r.get("req_id") == "c2")
    assert conflict | {"time": "-", "node": "-", "message": "-"} == {
        "time": "-",
        "node": "-",
        "message": "-",
        "level": "INFO",
        "logger": "realtime.dispatch",
        "req_id": "c2",
        "sub": "alice",
        "package": "authors.create",
        "status": "CONFLICT",
    }
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert {"method": "GET", "status": 200} .items() <= next(
        r for r in access if r["path"] == "/me"
    ).items()
    # not the token, nor its payload or signature alone, in any record
    for piece in (token, *token.split(".")[1:]):
        assert piece not in output
    banner = " ".join(r["message"] for r in records if r["logger"] == "realtime.cli")
    assert "database: postgresql://127.0.0.1:5432/" in banner
    assert "bus and jobs: redis://127.0.0.1:6379/" in banner
    assert "embedded" not in banner and "issuer: the development issuer" in banner


def test_the_banner_of_the_embedded_default_says_so(tmp_path: Path) -> None:
    with node(tmp_path) as server:
        output = server.output()
    assert "realtime: database: SQLite file .realtime/realtime.db (embedded); " in output
    assert "bus and jobs: in this process (embedded)" in output


def test_an_unknown_log_format_stops_start_up() -> None:
    from realtime.exceptions import ConfigError
    from realtime.settings import Settings

    with pytest.raises(ConfigError, match="REALTIME_LOG_FORMAT"):
        Settings.from_mapping({"REALTIME_LOG_FORMAT": "xml"})

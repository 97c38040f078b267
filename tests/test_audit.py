"""The audit log (realtime.audit, handlers/audit.py): a row for every call of an audited
package on both doors, on SQLite and PostgreSQL; audit.list for a tenant's admins only;
failures with their status; a full queue and a database outage; and nothing lost when a
real `realtime serve` gets SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.audit import node_name
from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import _truncate, build_app, in_thread, make_settings
from tests.helpers import auth_header, call, ws_call, ws_connect
from tests.nodes import mint, node
from tests.proxy import running_proxy

CREATE, UPDATE, DELETE = 10, 13, 14
AUTHORS_CREATE = 3
JOBS_START, JOBS_CANCEL = 20, 22
AUDIT_LIST = 25
FAST = {"audit_flush": 0.02}
LONG_JOB = {"total_steps": 100, "step_seconds": 30}


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "root": issuer.mint("root", ["user", "admin"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "gadmin": issuer.mint("gadmin", ["user", "admin"], tenant="globex"),
    }


@pytest.fixture
def audit_client(engine: Settings) -> Iterator[TestClient]:
    with TestClient(build_app(engine.replace(**FAST))) as client:
        yield client


def ok(answer: dict[str, Any]) -> Any:
    assert answer["status_code"] == 0, answer
    return answer["data"]


def rows(client: TestClient, token: str, expected: int, **query: Any) -> list[dict[str, Any]]:
    """The admin's audit.list over REST, once it holds `expected` rows (written in
    batches, a few ms after the calls)."""
    deadline = time.monotonic() + 10
    while True:
        answer = client.get(
            "/audit-logs", params={"per_page": 100, **query}, headers=auth_header(token)
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["meta"]["total"] >= expected or time.monotonic() > deadline:
            assert body["meta"]["total"] == expected, body
            return list(body["data"])
        time.sleep(0.02)


def what(entries: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    return {
        (e["package"], e["transport"], e["sub"], e["target"], e["req_id"], e["outcome"])
        for e in entries
    }


def socket_calls(ws: WebSocketTestSession, calls: list[tuple[int, Any, str]]) -> list[Any]:
    return [ok(call(ws, pkg_id, data, req_id)) for pkg_id, data, req_id in calls]


def test_every_audited_package_is_recorded_on_both_doors(
    audit_client: TestClient, tokens: dict[str, str]
) -> None:
    client, alice, root = audit_client, auth_header(tokens["alice"]), auth_header(tokens["root"])
    started = datetime.now(UTC)
    # REST
    project = client.post("/projects", json={"name": "p"}, headers=alice).json()["id"]
    assert (
        client.patch(f"/projects/{project}", json={"name": "q"}, headers=alice).status_code == 200
    )
    assert client.delete(f"/projects/{project}", headers=alice).status_code == 200
    job = client.post("/jobs", json=LONG_JOB, headers=alice).json()["job_id"]
    assert client.post(f"/jobs/{job}/cancel", headers=alice).json()["state"] == "CANCELLED"
    author = client.post("/authors", json={"name": "a-rest"}, headers=root).json()["id"]
    # the socket
    with client.websocket_connect("/ws", headers=alice) as ws:
        made = ok(call(ws, CREATE, {"name": "s"}, "c1"))["id"]
        socket_calls(ws, [(UPDATE, {"id": made, "name": "t"}, "u1"), (DELETE, {"id": made}, "d1")])
        started_job = ok(call(ws, JOBS_START, LONG_JOB, "j1"))["job_id"]
        ok(call(ws, JOBS_CANCEL, {"job_id": started_job}, "k1"))
    with client.websocket_connect("/ws", headers=root) as ws:
        socket_author = ok(call(ws, AUTHORS_CREATE, {"name": "a-ws"}, "a1"))["id"]
    # reads are not audited, nor is audit.list itself
    assert client.get(f"/projects/{made}", headers=alice).status_code == 404
    assert client.get("/projects", headers=alice).status_code == 200

    entries = rows(client, tokens["root"], 12)
    p, m, a, s = str(project), str(made), str(author), str(socket_author)
    assert what(entries) == {
        ("projects.create", "rest", "alice", p, None, "OK"),
        ("projects.update", "rest", "alice", p, None, "OK"),
        ("projects.delete", "rest", "alice", p, None, "OK"),
        ("jobs.start", "rest", "alice", job, None, "OK"),
        ("jobs.cancel", "rest", "alice", job, None, "OK"),
        ("authors.create", "rest", "root", a, None, "OK"),
        ("projects.create", "ws", "alice", m, "c1", "OK"),
        ("projects.update", "ws", "alice", m, "u1", "OK"),
        ("projects.delete", "ws", "alice", m, "d1", "OK"),
        ("jobs.start", "ws", "alice", started_job, "j1", "OK"),
        ("jobs.cancel", "ws", "alice", started_job, "k1", "OK"),
        ("authors.create", "ws", "root", s, "a1", "OK"),
    }
    assert {(e["tenant_id"], e["node"]) for e in entries} == {("acme", node_name())}
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert all(started - timedelta(seconds=1) <= t <= datetime.now(UTC) for t in times)
    assert times == sorted(times, reverse=True)  # newest first


def test_failures_are_recorded_with_their_status(
    audit_client: TestClient, tokens: dict[str, str]
) -> None:
    client, alice, root = audit_client, auth_header(tokens["alice"]), auth_header(tokens["root"])
    assert client.patch("/projects/999999", json={"name": "x"}, headers=alice).status_code == 404
    assert client.post("/authors", json={"name": "dup"}, headers=root).status_code == 201
    assert client.post("/authors", json={"name": "dup"}, headers=root).status_code == 409
    assert client.post("/authors", json={"name": "mine"}, headers=alice).status_code == 403
    missing_job = "0" * 32
    with client.websocket_connect("/ws", headers=alice) as ws:
        assert call(ws, CREATE, {"name": ""}, "bad")["status_code"] == 2
        assert call(ws, JOBS_CANCEL, {"job_id": missing_job}, "gone")["status_code"] == 4
    failed = [e for e in rows(client, tokens["root"], 6) if e["outcome"] != "OK"]
    assert what(failed) == {
        ("projects.update", "rest", "alice", "999999", None, "NOT_FOUND"),
        ("authors.create", "rest", "root", None, None, "CONFLICT"),
        ("authors.create", "rest", "alice", None, None, "PERMISSION_DENIED"),
        ("projects.create", "ws", "alice", None, "bad", "INVALID_DATA"),
        ("jobs.cancel", "ws", "alice", missing_job, "gone", "NOT_FOUND"),
    }


def test_values_a_table_would_refuse_are_stored_cut_and_cleaned(
    audit_client: TestClient, issuer: DevIssuer, tokens: dict[str, str]
) -> None:
    """A NUL in a client's req_id, a sub longer than the column: one such row must not
    hold the batch (and every later row) back on PostgreSQL."""
    long_sub = "s" * 300
    token = issuer.mint(long_sub, ["user"], tenant="acme")
    with audit_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        ok(call(ws, CREATE, {"name": "n"}, "nul\u0000here"))
        ok(call(ws, CREATE, {"name": "m"}, "plain"))
    entries = rows(audit_client, tokens["root"], 2)
    assert {e["req_id"] for e in entries} == {"nul\ufffdhere", "plain"}
    assert {e["sub"] for e in entries} == {"s" * 255}


def test_audit_list_is_for_admins_and_their_own_tenant(
    audit_client: TestClient, tokens: dict[str, str]
) -> None:
    client = audit_client
    for name, count in (("alice", 3), ("root", 1), ("bob", 2)):
        for i in range(count):
            made = client.post(
                "/projects", json={"name": f"{name}{i}"}, headers=auth_header(tokens[name])
            )
            assert made.status_code == 201
    acme = rows(client, tokens["root"], 4)
    assert {e["tenant_id"] for e in acme} == {"acme"}
    assert {e["sub"] for e in acme} == {"alice", "root"}
    globex = rows(client, tokens["gadmin"], 2)
    assert {(e["tenant_id"], e["sub"]) for e in globex} == {("globex", "bob")}
    # not an admin: refused on both doors, whatever the filters
    refused = client.get(
        "/audit-logs", params={"sub": "alice"}, headers=auth_header(tokens["alice"])
    )
    assert refused.status_code == 403
    with client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as ws:
        assert call(ws, AUDIT_LIST, {})["status_code"] == 3
    # over the socket, the same page with its meta
    with client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as ws:
        page = call(ws, AUDIT_LIST, {"per_page": 3, "page": 2})
        assert page["meta"] == {"page": 2, "per_page": 3, "total": 4, "pages": 2}
        assert [e["id"] for e in page["data"]] == [acme[3]["id"]]
    # filters: sub, package, time range (an admin cannot reach another tenant's sub)
    assert {e["sub"] for e in rows(client, tokens["root"], 3, sub="alice")} == {"alice"}
    rows(client, tokens["root"], 0, sub="bob")
    rows(client, tokens["root"], 4, package="projects.create")
    rows(client, tokens["root"], 0, package="projects.delete")
    newest = datetime.fromisoformat(acme[0]["at"])
    oldest = datetime.fromisoformat(acme[-1]["at"])
    after = (newest + timedelta(seconds=1)).isoformat()
    rows(client, tokens["root"], 0, since=after)
    rows(client, tokens["root"], 4, until=after)
    rows(client, tokens["root"], 4, since=oldest.isoformat())
    rows(client, tokens["root"], 0, until=oldest.isoformat())  # until is exclusive
    bad = client.get(
        "/audit-logs", params={"since": "yesterday"}, headers=auth_header(tokens["root"])
    )
    assert bad.status_code == 422
    month13 = client.get(
        "/audit-logs", params={"until": "2026-13-01T00:00:00Z"}, headers=auth_header(tokens["root"])
    )
    assert month13.status_code == 422
    assert month13.json()["error"]["details"][0]["path"] == "/until"


def test_rate_limited_calls_are_not_recorded(tmp_path: Path, tokens: dict[str, str]) -> None:
    settings = make_settings(tmp_path, rate_limit=0.01, rate_burst=2, **FAST)
    with TestClient(build_app(settings)) as client:
        answers = [
            client.post("/projects", json={"name": f"p{i}"}, headers=auth_header(tokens["alice"]))
            for i in range(4)
        ]
        assert [a.status_code for a in answers] == [201, 201, 429, 429]
        assert {e["outcome"] for e in rows(client, tokens["root"], 2)} == {"OK"}


def _metric(client: TestClient, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", client.get("/metrics").text, re.M)
    assert found, line
    return float(found.group(1))


def _until(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def _sqlite_rows(settings: Settings) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.embedded_database) as connection:
        return connection.execute("SELECT sub, package, outcome FROM audit_log").fetchall()


def test_a_full_queue_drops_new_rows_counts_them_and_answers_anyway(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    """The database cannot keep up (here: the flusher waits an hour): rows past the queue's
    bound are dropped and counted; every request is answered; what the queue held is
    written at shutdown."""
    settings = make_settings(tmp_path, audit_queue=3, audit_flush=3600.0)
    with TestClient(build_app(settings)) as client:
        with client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
            for i in range(5):
                ok(call(ws, CREATE, {"name": f"p{i}"}, f"r{i}"))
        assert _metric(client, 'realtime_audit_rows_total{result="dropped"}') == 2
        assert _metric(client, "realtime_audit_queue_rows") == 3
        assert _sqlite_rows(settings) == []
    assert _sqlite_rows(settings) == [("alice", "projects.create", "OK")] * 3


def test_database_outage_keeps_the_rows_until_it_is_back(
    tmp_path: Path, pg_url: str, tokens: dict[str, str]
) -> None:
    """PostgreSQL cut off (a real proxy in between): requests are answered (UNAVAILABLE,
    the operation itself needs the database) without waiting on the audit log; the rows
    wait in the queue, the failed writes are counted, and they are written once the
    database is back."""
    in_thread(asyncio.run, _truncate(pg_url))
    with running_proxy(pg_url) as proxy:
        settings = make_settings(tmp_path, database_url=proxy.url(pg_url), db_timeout=1.0, **FAST)
        alice = auth_header(tokens["alice"])
        with TestClient(build_app(settings)) as client:
            assert (
                client.post("/projects", json={"name": "before"}, headers=alice).status_code == 201
            )
            rows(client, tokens["root"], 1)
            proxy.cut()
            for i in range(3):
                begun = time.monotonic()
                answer = client.post("/projects", json={"name": f"down{i}"}, headers=alice)
                assert answer.status_code in (503, 504), answer.text
                assert time.monotonic() - begun < 3
            # the flusher tries, fails, keeps the rows and backs off (at most 5 s apart)
            _until(lambda: _metric(client, "realtime_audit_queue_rows") == 3)
            assert _metric(client, "realtime_audit_write_failures_total") >= 1
            proxy.restore()
            entries = rows(client, tokens["root"], 4)
            assert sorted(e["outcome"] for e in entries)[:1] == ["OK"]
            assert _metric(client, 'realtime_audit_rows_total{result="dropped"}') == 0


async def _pg_execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def test_a_row_the_table_refuses_does_not_hold_back_its_batch(
    tmp_path: Path, pg_url: str, tokens: dict[str, str]
) -> None:
    """PostgreSQL refuses one row of a batch (a constraint added for the test): the batch is
    written row by row, the refused row is dropped and counted, the others are stored."""
    in_thread(asyncio.run, _truncate(pg_url))
    refuse = "ALTER TABLE audit_log ADD CONSTRAINT test_refuse CHECK (package <> 'projects.update')"
    in_thread(asyncio.run, _pg_execute(pg_url, refuse))
    try:
        settings = make_settings(tmp_path, database_url=pg_url, audit_batch=3, audit_flush=3600.0)
        with TestClient(build_app(settings)) as client:
            with client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
                made = ok(call(ws, CREATE, {"name": "p"}, "c"))["id"]
                ok(call(ws, UPDATE, {"id": made, "name": "q"}, "u"))
                ok(call(ws, DELETE, {"id": made}, "d"))  # the third row: the batch is written
            entries = rows(client, tokens["root"], 2)
            assert {e["package"] for e in entries} == {"projects.create", "projects.delete"}
            assert _metric(client, 'realtime_audit_rows_total{result="dropped"}') == 1
            assert _metric(client, 'realtime_audit_rows_total{result="written"}') == 2
    finally:
        drop = "ALTER TABLE audit_log DROP CONSTRAINT test_refuse"
        in_thread(asyncio.run, _pg_execute(pg_url, drop))


# -- a real `realtime serve` and SIGTERM ---------------------------------------------


async def _pg_rows(url: str, sub: str) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        found = await connection.fetch(
            "SELECT sub, package, transport, outcome FROM audit_log WHERE sub = $1", sub
        )
        return [tuple(r) for r in found]
    finally:
        await connection.close()


def _db_rows(database: str, sub: str) -> list[tuple[Any, ...]]:
    if database.startswith("sqlite:///"):
        with sqlite3.connect(database.removeprefix("sqlite:///")) as connection:
            query = "SELECT sub, package, transport, outcome FROM audit_log WHERE sub = ?"
            return connection.execute(query, (sub,)).fetchall()
    return list(in_thread(asyncio.run, _pg_rows(database, sub)))


async def _socket_creates(address: str, token: str, count: int) -> None:
    ws = await ws_connect(address, additional_headers=auth_header(token))
    try:
        for i in range(count):
            answer = await ws_call(ws, CREATE, {"name": f"ws{i}"}, f"r{i}")
            assert answer["status_code"] == 0, answer
    finally:
        await ws.close()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_rows_are_not_lost_at_sigterm(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    """The flusher is told to wait an hour, so every row is still in memory when the
    process gets SIGTERM: all of them are in the table once it has exited."""
    env = {"REALTIME_AUDIT_FLUSH": "3600", "REALTIME_DRAIN_SECONDS": "1"}
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
        env["REALTIME_EMBEDDED_DB"] = str(tmp_path / "node.db")
    else:
        url = request.getfixturevalue("pg_url")
        env["DATABASE_URL"] = url
    sub = f"term-{database}-{time.monotonic_ns()}"
    token = mint(tmp_path, sub)
    with node(tmp_path, **env) as server:
        with httpx.Client(base_url=f"http://{server.address}", headers=auth_header(token)) as http:
            for i in range(20):
                assert http.post("/projects", json={"name": f"rest{i}"}).status_code == 201
        asyncio.run(_socket_creates(server.address, token, 5))
        assert _db_rows(url, sub) == []  # all of it still queued in the server
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) in (0, -signal.SIGTERM), server.output()
    found = _db_rows(url, sub)
    assert sorted(found) == sorted(
        [(sub, "projects.create", "rest", "OK")] * 20 + [(sub, "projects.create", "ws", "OK")] * 5
    ), server.output()
    assert "could not be written" not in server.output()


def test_an_audited_package_needs_a_store(tmp_path: Path) -> None:
    from realtime.app import create_app
    from realtime.exceptions import ConfigError
    from tests.conftest import APP_PACKAGES
    from tests.packages import TEST_PACKAGES

    settings = make_settings(tmp_path, handlers=("tests.extra_routes", "tests.failing_jobs"))
    with pytest.raises(ConfigError, match="package authors.create is audited=True, but no module"):
        create_app(settings, [*APP_PACKAGES, *TEST_PACKAGES])

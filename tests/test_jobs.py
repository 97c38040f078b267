"""Jobs on the in-process broker, on SQLite and on PostgreSQL (fixture `engine`)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from tests.helpers import auth_header, call, close_of, request

START, STATUS, CANCEL, WATCH, LIST = 20, 21, 22, 23, 24


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {"alice": issuer.mint("alice", ["user"]), "bob": issuer.mint("bob", ["user"])}


def start(ws: WebSocketTestSession, steps: int, seconds: float) -> str:
    answer = call(ws, START, {"total_steps": steps, "step_seconds": seconds}, req_id="start")
    assert answer["status_code"] == 0, answer
    return str(answer["data"]["job_id"])


def events_until_done(ws: WebSocketTestSession) -> list[dict[str, Any]]:
    events = []
    while not events or events[-1]["event"] != "job.done":
        events.append(ws.receive_json())
    return events


def test_progress_then_exactly_one_done(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        job_id = start(ws, 4, 0.05)
        answer = call(ws, WATCH, {"job_id": job_id}, req_id="watch")
        assert answer["status_code"] == 0 and answer["data"]["job_id"] == job_id
        events = events_until_done(ws)
        status = call(ws, STATUS, {"job_id": job_id})["data"]
    progress = [e["data"] for e in events if e["event"] == "job.progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert [p["progress"] for p in progress] == [25, 50, 75, 100]
    assert all(p["job_id"] == job_id and p["total_steps"] == 4 for p in progress)
    assert events[-1]["data"] == {"job_id": job_id, "state": "SUCCESS", "result": {"steps": 4}}
    assert sum(e["event"] == "job.done" for e in events) == 1
    assert status["state"] == "SUCCESS" and status["progress"] == 100
    assert status["result"] == {"steps": 4}


def _answer(ws: Any, pkg_id: int, data: Any) -> Any:
    """The answer to one request, past the owner's personal job.done event (the job can
    end while its owner polls its status)."""
    request(ws, pkg_id, data, "poll")
    while True:
        frame = ws.receive_json()
        if frame.get("req_id") == "poll":
            return frame


def test_late_watch_gets_the_history(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        job_id = start(ws, 3, 0.01)
        # the owner's personal job.done: the job has ended and its end has been published,
        # so none of it can reach the late socket live (on its own personal channel)
        assert events_until_done(ws)[-1]["topic"].startswith("user.")
        assert _answer(ws, STATUS, {"job_id": job_id})["data"]["state"] == "SUCCESS"
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as late:
        assert call(late, WATCH, {"job_id": job_id})["status_code"] == 0
        events = events_until_done(late)
        assert call(late, STATUS, {"job_id": job_id})["req_id"] == "r1"  # nothing else came
    assert [e["event"] for e in events] == ["job.progress"] * 3 + ["job.done"]


def test_only_the_owner_sees_a_job(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        job_id = start(ws, 2, 0.01)
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as ws:
        for pkg_id in (STATUS, CANCEL, WATCH):
            answer = call(ws, pkg_id, {"job_id": job_id})
            assert answer["status_code"] == 4 and answer["error"]["message"] == "job not found"
    bob = auth_header(tokens["bob"])
    assert db_client.get(f"/jobs/{job_id}", headers=bob).status_code == 404
    assert db_client.post(f"/jobs/{job_id}/cancel", headers=bob).status_code == 404
    assert db_client.get("/jobs", headers=bob).json()["meta"]["total"] == 0
    with db_client.websocket_connect(f"/ws/jobs/{job_id}", headers=bob) as ws:
        assert close_of(ws) == (1008, "job not found")


def test_cancel_mid_job(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        job_id = start(ws, 50, 0.05)  # 2.5 s if nobody cancels
        call(ws, WATCH, {"job_id": job_id}, req_id="watch")
        first = ws.receive_json()
        assert first["event"] == "job.progress"
        ws.send_text(json.dumps({"pkg_id": CANCEL, "req_id": "cancel", "data": {"job_id": job_id}}))
        frames = []
        while not any(f.get("req_id") == "cancel" for f in frames) or not any(
            f.get("event") == "job.done" for f in frames
        ):
            frames.append(ws.receive_json())
        time.sleep(0.3)  # a further step would have happened by now
        status = call(ws, STATUS, {"job_id": job_id}, req_id="after")
    answer = next(f for f in frames if f.get("req_id") == "cancel")
    assert answer["data"] == {"job_id": job_id, "state": "CANCELLED"}
    done = [f for f in frames if f.get("event") == "job.done"]
    assert len(done) == 1 and done[0]["data"] == {"job_id": job_id, "state": "CANCELLED"}
    assert status["status_code"] == 0 and status["data"]["state"] == "CANCELLED"
    assert status["data"]["progress"] < 100


def test_bad_parameters_queue_nothing(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        for data in (
            {"total_steps": 0},
            {"total_steps": -3},
            {"step_seconds": -1},
            {"step_seconds": 61},
            {"total_steps": 1000, "step_seconds": 60},
            {"total_steps": "ten"},
            {"other": 1},
        ):
            assert call(ws, START, data)["status_code"] == 2, data
        assert call(ws, LIST, {})["meta"]["total"] == 0


def test_rest_doors(db_client: TestClient, tokens: dict[str, str]) -> None:
    alice = auth_header(tokens["alice"])
    started = db_client.post("/jobs", json={"total_steps": 2, "step_seconds": 0.01}, headers=alice)
    assert started.status_code == 202 and set(started.json()) == {"job_id"}
    job_id = started.json()["job_id"]
    for _ in range(200):
        status = db_client.get(f"/jobs/{job_id}", headers=alice).json()
        if status["state"] == "SUCCESS":
            break
        time.sleep(0.02)
    assert status["job_id"] == job_id and status["state"] == "SUCCESS"
    listed = db_client.get("/jobs", headers=alice).json()
    assert listed["meta"]["total"] == 1 and listed["data"][0]["job_id"] == job_id
    cancelled = db_client.post(f"/jobs/{job_id}/cancel", headers=alice)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "SUCCESS"  # too late
    assert db_client.post("/jobs", json={"total_steps": 0}, headers=alice).status_code == 422
    assert db_client.get("/jobs/not-a-job-id", headers=alice).status_code == 422


def test_compat_socket_streams_plain_progress_then_closes_1000(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    alice = auth_header(tokens["alice"])
    job_id = db_client.post(
        "/jobs", json={"total_steps": 3, "step_seconds": 0.02}, headers=alice
    ).json()["job_id"]
    with db_client.websocket_connect(f"/ws/jobs/{job_id}", headers=alice) as ws:
        objects = [ws.receive_json() for _ in range(3)]
        assert close_of(ws) == (1000, "job finished")
    assert [o["step"] for o in objects] == [1, 2, 3]
    assert set(objects[0]) == {"job_id", "progress", "step", "total_steps", "payload"}


def test_server_stop_ends_running_jobs_with_failure(engine: Any, tokens: dict[str, str]) -> None:
    from tests.conftest import build_app

    alice = auth_header(tokens["alice"])
    with TestClient(build_app(engine)) as client:
        job_id = client.post(
            "/jobs", json={"total_steps": 100, "step_seconds": 1}, headers=alice
        ).json()["job_id"]
        time.sleep(0.1)
    with TestClient(build_app(engine)) as client:
        status = client.get(f"/jobs/{job_id}", headers=alice).json()
    assert status["state"] == "FAILURE" and status["error"] == "interrupted: the server stopped"


def test_a_granted_role_sees_the_jobs_of_its_tenant_only(
    db_client: TestClient, issuer: DevIssuer
) -> None:
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    support = auth_header(issuer.mint("sam", ["user", "support"], tenant="acme"))
    elsewhere = auth_header(issuer.mint("sue", ["user", "support"], tenant="globex"))
    job_id = db_client.post(
        "/jobs", json={"total_steps": 50, "step_seconds": 0.05}, headers=alice
    ).json()["job_id"]
    assert db_client.get(f"/jobs/{job_id}", headers=elsewhere).status_code == 404
    assert db_client.post(f"/jobs/{job_id}/cancel", headers=elsewhere).status_code == 404
    with db_client.websocket_connect("/ws", headers=support) as ws:
        assert call(ws, STATUS, {"job_id": job_id})["data"]["job_id"] == job_id
        assert call(ws, WATCH, {"job_id": job_id})["status_code"] == 0
        answer = call(ws, CANCEL, {"job_id": job_id}, req_id="cancel")
        while answer.get("req_id") != "cancel":  # watched events may come first
            answer = ws.receive_json()
        assert answer["data"] == {"job_id": job_id, "state": "CANCELLED"}
    assert db_client.get("/jobs", headers=support).json()["meta"]["total"] == 0  # own list
    assert db_client.get(f"/jobs/{job_id}", headers=alice).json()["state"] == "CANCELLED"

"""The jobs machinery (realtime.jobs.steps) from a job type's side: a new type is a task
function and a start package, and the framework does the rest (lease, progress, one
job.done, status, watch, the compatibility stream). Also the hand-back at a graceful
stop, and the compatibility stream's cut of the hub's frames."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketTestSession
from taskiq import TaskiqDepends, TaskiqState

from handlers import jobs_sql
from handlers.jobs import JOBS
from realtime import Context, JSONObject, Package, Rest, StepJobs
from realtime.app import create_app
from realtime.auth.dev import DevIssuer
from realtime.bus import Event
from realtime.bus.hub import Hub, message_frame
from realtime.bus.memory import MemoryBackend
from realtime.db import open_database
from realtime.exceptions import Unavailable
from realtime.jobs import TaskServices
from realtime.migrate import upgrade
from realtime.settings import Settings
from tests.conftest import APP_PACKAGES, APP_TASKS
from tests.helpers import auth_header, call, close_of, request

# -- a job type of its own: a task function and a start package, nothing else ----------

DIGEST_TASK = "digest_task"
START_DIGEST, WATCH, STATUS = 940, 23, 21


async def digest_task(
    job_id: str,
    text: str,
    state: TaskiqState = TaskiqDepends(),  # noqa: B008 - taskiq's dependency marker
) -> Any:
    """Two steps of another kind of work than sleeping: hash the text, then hash it twice."""

    async def work(step: int) -> None:
        await asyncio.to_thread(hashlib.sha256, text.encode() * step)

    return await JOBS.run(state.services, job_id, 2, work)


async def start_digest(ctx: Context, data: JSONObject) -> Any:
    return await JOBS.queue(ctx, DIGEST_TASK, {"text": data["text"]})


TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
DIGEST_PACKAGE = Package(
    START_DIGEST, "test.digest", start_digest, schema=TEXT, rest=Rest("POST", "/test/digests", 202)
)


PERMISSIONS = """
[packages]
"jobs.start" = ["user"]
"jobs.status" = ["user"]
"jobs.cancel" = ["user"]
"jobs.watch" = ["user"]
"jobs.list" = ["user"]
"test.digest" = ["user"]   # the one line the new package needs

[topics."project.{id}"]        # the shipped authorizer's pattern (handlers/projects.py)
subscribe = ["user"]

[grants]
"jobs.any" = ["support"]
"""


@pytest.fixture
def digest_settings(engine: Settings, tmp_path: Path) -> Settings:
    """On SQLite, then on PostgreSQL: the application's handlers only, and their
    permissions plus the new package's."""
    (tmp_path / "permissions.toml").write_text(PERMISSIONS)
    return engine.replace(
        permissions_file=str(tmp_path / "permissions.toml"), handlers=("handlers",)
    )


@pytest.fixture
def digest_client(digest_settings: Settings) -> Iterator[TestClient]:
    tasks = [*APP_TASKS, JOBS.task(DIGEST_TASK, digest_task)]
    app = create_app(digest_settings, [*APP_PACKAGES, DIGEST_PACKAGE], tasks)
    with TestClient(app) as client:
        yield client


def next_frame(ws: WebSocketTestSession) -> dict[str, Any]:
    """The next frame but the owner's job.done on the personal channel (tests/test_channels):
    it comes to a socket that was not watching yet when the job ended, as a quick one may."""
    while True:
        frame = ws.receive_json()
        if not (frame.get("event") == "job.done" and frame["topic"].startswith("user.")):
            return dict(frame)


def reply(ws: WebSocketTestSession, pkg_id: int, data: Any, req_id: str = "r1") -> Any:
    request(ws, pkg_id, data, req_id)
    return next_frame(ws)


def watched(ws: WebSocketTestSession, job_id: str) -> list[dict[str, Any]]:
    """Every event of the job, from its history, up to its job.done; then nothing more."""
    assert reply(ws, WATCH, {"job_id": job_id}, req_id="watch")["status_code"] == 0
    events = [next_frame(ws)]
    while events[-1]["event"] != "job.done":
        events.append(next_frame(ws))
    assert reply(ws, STATUS, {"job_id": job_id}, req_id="after")["req_id"] == "after"
    return events


def assert_ran_once(events: list[dict[str, Any]], job_id: str) -> None:
    steps = [e["data"]["step"] for e in events if e["event"] == "job.progress"]
    assert steps == [1, 2]  # each step published once, in order
    assert [e["event"] for e in events].count("job.done") == 1
    done = events[-1]["data"]
    assert done == {"job_id": job_id, "state": "SUCCESS", "result": {"steps": 2}}


def test_a_new_job_type_started_on_the_socket(digest_client: TestClient, token: str) -> None:
    with digest_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        started = call(ws, START_DIGEST, {"text": "abc"}, req_id="start")
        assert started["status_code"] == 0, started
        job_id = started["data"]["job_id"]
        assert_ran_once(watched(ws, job_id), job_id)
        status = reply(ws, STATUS, {"job_id": job_id})["data"]
    assert status["state"] == "SUCCESS" and status["progress"] == 100


def test_a_new_job_type_started_over_rest(digest_client: TestClient, token: str) -> None:
    alice = auth_header(token)
    started = digest_client.post("/test/digests", json={"text": "abc"}, headers=alice)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    for _ in range(200):
        if digest_client.get(f"/jobs/{job_id}", headers=alice).json()["state"] == "SUCCESS":
            break
        time.sleep(0.02)
    with digest_client.websocket_connect("/ws", headers=alice) as ws:
        assert_ran_once(watched(ws, job_id), job_id)  # a late watcher gets the history
    with digest_client.websocket_connect(f"/ws/jobs/{job_id}", headers=alice) as ws:
        plain = [ws.receive_json(), ws.receive_json()]
        assert close_of(ws) == (1000, "job finished")
    assert [p["step"] for p in plain] == [1, 2]
    listed = digest_client.get("/jobs", headers=alice).json()
    assert [j["job_id"] for j in listed["data"]] == [job_id]


def test_another_user_cannot_see_the_new_type(
    digest_client: TestClient, token: str, issuer: DevIssuer
) -> None:
    job_id = digest_client.post(
        "/test/digests", json={"text": "abc"}, headers=auth_header(token)
    ).json()["job_id"]
    bob = auth_header(issuer.mint("bob", ["user"], tenant="acme"))
    assert digest_client.get(f"/jobs/{job_id}", headers=bob).status_code == 404


# -- the hand-back at a graceful stop: an outage is a warning, anything else a bug -----


class _HandBackFails:
    """The application's store, except that handing a run back raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(jobs_sql, name)

    async def hand_back(self, db: Any, job_id: str, runner: str) -> None:
        raise self.error


async def _stopped_mid_step(settings: Settings, error: Exception) -> str:
    """Run a job on a worker's terms (redelivered) and cancel it during its first step,
    as a worker's stop past its grace does; returns the job id."""
    await asyncio.to_thread(upgrade, settings)
    async with open_database(settings) as database:
        services = TaskServices(settings, database, Hub(MemoryBackend(10), 30), redelivered=True)
        job_id = "0" * 32
        await jobs_sql.create(database, job_id, "alice", "acme", "t", {})
        stuck = asyncio.Event()

        async def work(step: int) -> None:
            stuck.set()
            await asyncio.Event().wait()  # until cancelled

        jobs = StepJobs(_HandBackFails(error))
        running = asyncio.create_task(jobs.run(services, job_id, 3, work))
        await stuck.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):  # the stop goes on
            await running
    return job_id


@pytest.mark.anyio
async def test_hand_back_outage_is_a_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "realtime.jobs.steps"):
        job_id = await _stopped_mid_step(settings, Unavailable(2, "the database is unavailable"))
    [record] = [r for r in caplog.records if r.name == "realtime.jobs.steps"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert f"job {job_id}: not handed back" in record.getMessage()


@pytest.mark.anyio
async def test_hand_back_bug_is_logged_with_its_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "realtime.jobs.steps"):
        job_id = await _stopped_mid_step(settings, RuntimeError("a bug"))
    [record] = [r for r in caplog.records if r.name == "realtime.jobs.steps"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert f"job {job_id}: handing it back failed" in record.getMessage()


# -- the hub's frames carry their event: the compatibility stream parses nothing ------


@pytest.mark.parametrize(
    ("topic", "data"),
    [
        ("job:abc", {"job_id": "abc", "step": 1, "payload": {"at": 1.25}}),
        ('odd ","data": topic', {"text": '","data":"}', "nested": {"data": [1, 2]}}),
        ("job:x", "a string"),
        ("job:x", None),
    ],
)
def test_event_frames_carry_the_event_they_were_made_from(topic: str, data: Any) -> None:
    """The compatibility stream writes the event's data itself, taken from the frame."""
    raw = orjson.dumps(data)
    for name in (b"job.progress", b"job.done", b"message"):
        event = Event(topic, 7, raw, name)
        frame = message_frame(topic, "e1f2", event)
        assert frame.event is event
        assert orjson.loads(bytes(frame)) == {
            "event": name.decode(),
            "topic": topic,
            "offset": "e1f2:7",
            "data": data,
        }

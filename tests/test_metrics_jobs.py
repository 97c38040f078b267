"""How jobs end, as the metrics count it: by the final state the job's record got
(SUCCESS, FAILURE, CANCELLED), once per job, with the runs it took; on the embedded
default, where the jobs run inside the server."""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient, WebSocketTestSession

from tests.helpers import auth_header, call
from tests.test_metrics_bus import sample

START, STATUS, CANCEL, WATCH = 20, 21, 22, 23
FAILING = 915  # tests/failing_jobs.py: fails at its second step


def done(ws: WebSocketTestSession) -> dict[str, Any]:
    """The job.done the owner's socket gets on its personal channel."""
    while (frame := ws.receive_json()).get("event") != "job.done":
        pass
    return dict(frame["data"])


def test_jobs_are_counted_by_the_state_they_ended_in(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for state in ("SUCCESS", "FAILURE", "CANCELLED"):  # every state's series from the start
            assert sample(client, "realtime_jobs_ended_total", state=state) == 0
        started = call(ws, START, {"total_steps": 2, "step_seconds": 0.01}, req_id="ok")
        assert done(ws) == {
            "job_id": started["data"]["job_id"],
            "state": "SUCCESS",
            "result": {"steps": 2},
        }
        assert call(ws, FAILING, {}, req_id="bad")["status_code"] == 0
        assert done(ws)["state"] == "FAILURE"
        assert sample(client, "realtime_jobs_ended_total", state="SUCCESS") == 1
        assert sample(client, "realtime_jobs_ended_total", state="FAILURE") == 1
        # each ended by its first run
        for state in ("SUCCESS", "FAILURE"):
            assert sample(client, "realtime_job_attempts_count", state=state) == 1
            assert sample(client, "realtime_job_attempts_bucket", state=state, le="1.0") == 1
        # taskiq's own view: the failing run raised
        assert sample(client, "realtime_jobs_finished_total", task="failing_task", outcome="error")
        assert sample(client, "realtime_jobs_ended_total", state="CANCELLED") == 0


def test_a_cancelled_job_is_counted_once_as_cancelled(client: TestClient, token: str) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        started = call(ws, START, {"total_steps": 50, "step_seconds": 0.05}, req_id="start")
        job_id = started["data"]["job_id"]
        ws.send_text(json.dumps({"pkg_id": CANCEL, "req_id": "cancel", "data": {"job_id": job_id}}))
        assert done(ws) == {"job_id": job_id, "state": "CANCELLED"}
        # the run stops at its next step without ending the job a second time
        assert call(ws, STATUS, {"job_id": job_id}, req_id="status")["req_id"] == "status"
    assert sample(client, "realtime_jobs_ended_total", state="CANCELLED") == 1
    assert sample(client, "realtime_jobs_ended_total", state="SUCCESS") == 0
    assert sample(client, "realtime_jobs_ended_total", state="FAILURE") == 0
    # a cancel is not a run's end: no attempts observed for it
    assert sample(client, "realtime_job_attempts_count", state="CANCELLED") == 0

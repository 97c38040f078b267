"""Issue 11, item 14: stopping the embedded server with jobs running logged one
CancelledError traceback per job ('Exception found while executing function.', taskiq's
runner), 17 for 17 jobs. The stop now reaches each job's own body, which records its end;
taskiq's runner sees a job that ended and logs nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.helpers import ws_call, ws_connect
from tests.nodes import mint, node

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
JOBS = 17
WATCH = 23


async def test_stopping_the_embedded_server_with_jobs_running_logs_no_traceback(
    tmp_path: Path,
) -> None:
    headers = {"Authorization": f"Bearer {mint(tmp_path, 'alice')}"}
    limits = {"REALTIME_RATE_LIMIT": "100000", "REALTIME_RATE_BURST": "100000"}
    with node(tmp_path, "embedded", REALTIME_DRAIN_SECONDS="0.2", **limits) as server:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", headers=headers) as http:
            body = {"total_steps": 100, "step_seconds": 1}
            ids = [(await http.post("/jobs", json=body)).json()["job_id"] for _ in range(JOBS)]
            for _ in range(500):  # every job has begun running
                states = {(await http.get(f"/jobs/{i}")).json()["state"] for i in ids}
                if states == {"STARTED"}:
                    break
                await asyncio.sleep(0.02)
            assert states == {"STARTED"}
        # control: a watcher still gets its job's end before the server goes
        watcher = await ws_connect(server.address, additional_headers=headers)
        assert (await ws_call(watcher, WATCH, {"job_id": ids[0]}))["status_code"] == 0
        server.process.send_signal(signal.SIGTERM)
        frames = []
        async with asyncio.timeout(20):
            # the owner's socket also gets every job's job.done on its personal channel, and
            # the watched job's progress frames may still come before its end
            while not frames or not _is_end_of(frames[-1], ids[0]):
                frames.append(json.loads(await watcher.recv()))
        server.process.wait(20)
    ended = {"job_id": ids[0], "state": "FAILURE", "error": "interrupted: the server stopped"}
    assert frames[-1]["data"] == ended
    output = server.output()
    assert "Traceback" not in output and "CancelledError" not in output, output[-3000:]
    assert "Exception found while executing function" not in output
    database = sqlite3.connect(tmp_path / "embedded" / ".realtime" / "realtime.db")
    try:
        rows = database.execute("SELECT state, error FROM jobs").fetchall()
    finally:
        database.close()
    assert rows == [("FAILURE", "interrupted: the server stopped")] * JOBS


def _is_end_of(frame: dict[str, object], job_id: str) -> bool:
    return frame.get("topic") == f"job:{job_id}" and frame.get("event") == "job.done"

"""Issue 11, item 6: the drain of `realtime serve` (SIGTERM) stops advertising the node.

Before, during the drain `GET /ready` still said 200 ready, a socket opened during the
drain was served as usual (no `server.draining`, closed 1012 by uvicorn at the end), and
the watcher of a job running in the in-process broker got its 1001 close before the job
was stopped: its `job.done` was published to nobody.

Each test drives a real `realtime serve` process, with a control socket or request still
answered during the drain.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ws_call, ws_closed, ws_connect
from tests.nodes import Node, mint, node

pytestmark = pytest.mark.anyio
ECHO, JOBS_START, JOBS_WATCH = 40, 20, 23
DRAINING = {"event": "server.draining", "data": {}}
GOING_AWAY = (1001, "server draining")


async def _next(ws: Any) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _draining(server: Node, tmp_path: Path) -> Any:
    """SIGTERM the node; returns a socket opened before, once it was told `server.draining`
    (so the drain has started)."""
    ws = await ws_connect(server.address, f"/ws?token={mint(tmp_path, 'alice')}")
    assert (await ws_call(ws, ECHO, {"n": 0}))["status_code"] == 0
    server.process.send_signal(signal.SIGTERM)
    assert await _next(ws) == DRAINING
    return ws


async def test_ready_answers_503_at_once_when_the_drain_starts(tmp_path: Path) -> None:
    with node(tmp_path, "ready", REALTIME_DRAIN_SECONDS="3") as server:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=5) as http:
            assert (await http.get("/ready")).status_code == 200
            ws = await _draining(server, tmp_path)
            not_ready = await http.get("/ready")
            assert (not_ready.status_code, not_ready.json()) == (
                503,
                {"status": "draining", "checks": {}},
            )
            # controls: the node is alive and the socket opened before is still served
            assert (await http.get("/health")).status_code == 200
        assert (await ws_call(ws, ECHO, {"n": 1}, "r2"))["data"] == {"n": 1}
        assert await ws_closed(ws, timeout=10) == GOING_AWAY
        assert server.process.wait(10) in (0, -signal.SIGTERM)


async def test_a_socket_opened_during_the_drain_is_told_at_once_and_closed_1001(
    tmp_path: Path,
) -> None:
    with node(tmp_path, "late", REALTIME_DRAIN_SECONDS="2") as server:
        late_token = mint(tmp_path, "bob")  # a subprocess: not inside the drain window
        early = await _draining(server, tmp_path)
        late = await ws_connect(server.address, f"/ws?token={late_token}")
        assert await _next(late) == DRAINING
        # control: the late socket is still answered until the window ends
        assert (await ws_call(late, ECHO, {"late": True}))["data"] == {"late": True}
        assert await ws_closed(late, timeout=10) == GOING_AWAY
        assert await ws_closed(early, timeout=10) == GOING_AWAY
        assert server.process.wait(10) in (0, -signal.SIGTERM)


async def test_the_watcher_of_an_in_process_job_gets_its_job_done_before_1001(
    tmp_path: Path,
) -> None:
    with node(tmp_path, "jobs", REALTIME_DRAIN_SECONDS="0.5") as server:
        ws = await ws_connect(server.address, f"/ws?token={mint(tmp_path, 'carol')}")
        started = await ws_call(ws, JOBS_START, {"total_steps": 100, "step_seconds": 30})
        job_id = started["data"]["job_id"]
        watched = await ws_call(ws, JOBS_WATCH, {"job_id": job_id}, "w")
        assert watched["status_code"] == 0
        server.process.send_signal(signal.SIGTERM)
        assert await _next(ws) == DRAINING
        done = await _next(ws)
        assert (done["event"], done["topic"]) == ("job.done", f"job:{job_id}")
        assert done["data"] == {
            "job_id": job_id,
            "state": "FAILURE",
            "error": "interrupted: the server stopped",
        }
        assert await ws_closed(ws, timeout=10) == GOING_AWAY
        assert server.process.wait(10) in (0, -signal.SIGTERM)

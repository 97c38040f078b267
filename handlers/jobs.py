"""Jobs: start, status, cancel, watch; the `long_running_task` that reports progress.

Progress and the end of a job are published on the topic `job:<id>` as the events
`job.progress` and `job.done`; exactly one `job.done` is published per job, by whichever
writer moved it to its final state (the task, or a cancel).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from taskiq import TaskiqDepends, TaskiqState

from handlers import jobs_sql as sql
from realtime.bus import Offset
from realtime.connection import Connection, ignore_frame
from realtime.exceptions import InvalidData, NormalClosure, NotFound, PolicyViolation
from realtime.jobs import Task
from realtime.packages import Context, Package, Page, Rest
from realtime.state import Services
from realtime.types import JSONObject
from schema import jobs as s

logger = logging.getLogger("handlers.jobs")
MAX_JOB_SECONDS = 3600
TASK = "long_running_task"


def job_topic(job_id: str) -> str:
    return f"job:{job_id}"


async def announce_done(services: Services, job_id: str, state: str, **outcome: Any) -> None:
    await services.hub.publish(
        job_topic(job_id), {"job_id": job_id, "state": state, **outcome}, event="job.done"
    )


async def long_running_task(
    job_id: str,
    total_steps: int,
    step_seconds: float,
    state: TaskiqState = TaskiqDepends(),  # noqa: B008 - taskiq's dependency marker
) -> dict[str, Any] | None:
    services: Services = state.services
    db = services.database
    if not await sql.start(db, job_id):
        return None  # cancelled before it started; the cancel announced job.done
    try:
        for step in range(1, total_steps + 1):
            await asyncio.sleep(step_seconds)
            percent = step * 100 // total_steps
            if not await sql.progress(db, job_id, percent):
                return None  # cancelled between steps
            await services.hub.publish(
                job_topic(job_id),
                {
                    "job_id": job_id,
                    "progress": percent,
                    "step": step,
                    "total_steps": total_steps,
                    "payload": {"message": f"step {step} of {total_steps}"},
                },
                event="job.progress",
            )
        result = {"steps": total_steps}
        if await sql.finish(db, job_id, "SUCCESS", result=result):
            await announce_done(services, job_id, "SUCCESS", result=result)
        return result
    except asyncio.CancelledError:
        # the server is stopping (in-process broker): record and announce it, then stop
        error = "interrupted: the server stopped"
        if await sql.finish(db, job_id, "FAILURE", error=error):
            await announce_done(services, job_id, "FAILURE", error=error)
        raise
    except Exception:
        logger.exception("job %s failed", job_id)
        if await sql.finish(db, job_id, "FAILURE", error="the job failed"):
            await announce_done(services, job_id, "FAILURE", error="the job failed")
        raise


async def _owned(ctx: Context, job_id: str) -> dict[str, Any]:
    job = await sql.get(ctx.services.database, job_id, owner=ctx.principal.sub)
    if job is None:
        raise NotFound("job not found")  # another user's job looks exactly like none
    return job


async def start(ctx: Context, data: JSONObject) -> dict[str, Any]:
    params = {"total_steps": data["total_steps"], "step_seconds": data["step_seconds"]}
    if params["total_steps"] * params["step_seconds"] > MAX_JOB_SECONDS:
        raise InvalidData(
            f"a job may run at most {MAX_JOB_SECONDS} seconds",
            [{"path": "/", "reason": "total_steps * step_seconds is too long"}],
        )
    job_id = secrets.token_hex(16)
    principal = ctx.principal
    await sql.create(
        ctx.services.database, job_id, principal.sub, principal.tenant_id, TASK, params
    )
    await ctx.services.jobs.kick(TASK, job_id=job_id, **params)
    return {"job_id": job_id}


async def status(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return await _owned(ctx, data["job_id"])


async def cancel(ctx: Context, data: JSONObject) -> dict[str, Any]:
    job = await _owned(ctx, data["job_id"])
    if await sql.finish(ctx.services.database, job["job_id"], "CANCELLED"):
        await announce_done(ctx.services, job["job_id"], "CANCELLED")
        return {"job_id": job["job_id"], "state": "CANCELLED"}
    return {"job_id": job["job_id"], "state": (await _owned(ctx, job["job_id"]))["state"]}


async def watch(ctx: Context, data: JSONObject) -> dict[str, Any]:
    if ctx.session is None:
        raise InvalidData("jobs.watch is only served on a socket")
    job = await _owned(ctx, data["job_id"])
    since = data.get("since") or Offset.start()  # the whole history by default
    answer, go_live = await ctx.services.hub.subscribe(ctx.session, job_topic(job["job_id"]), since)
    ctx.on_answered(go_live)
    return {"job_id": job["job_id"], "offset": answer["offset"]}


async def list_jobs(ctx: Context, data: JSONObject) -> Page:
    items, total = await sql.page(
        ctx.services.database, ctx.principal.sub, page=data["page"], per_page=data["per_page"]
    )
    return Page(items, total)


PACKAGES = [
    Package(
        20,
        "jobs.start",
        start,
        schema=s.START,
        response_schema=s.STARTED,
        rest=Rest("POST", "/jobs", 202),
        description="Start a long-running job.",
    ),
    Package(
        21,
        "jobs.status",
        status,
        schema=s.JOB_REF,
        response_schema=s.STATUS,
        rest=Rest("GET", "/jobs/{job_id}"),
        description="A job's state (owner only).",
    ),
    Package(
        22,
        "jobs.cancel",
        cancel,
        schema=s.JOB_REF,
        response_schema=s.CANCELLED,
        rest=Rest("DELETE", "/jobs/{job_id}"),
        description="Cancel a job (owner only).",
    ),
    Package(
        23,
        "jobs.watch",
        watch,
        schema=s.WATCH,
        response_schema=s.WATCHING,
        description="Progress events, history first, then exactly one job.done.",
    ),
    Package(
        24,
        "jobs.list",
        list_jobs,
        schema=s.LIST,
        response_schema=s.STATUS,
        paginated=True,
        rest=Rest("GET", "/jobs"),
        description="The caller's jobs.",
    ),
]

TASKS = [Task(TASK, long_running_task)]


class _PlainProgress:
    """Compatibility stream: the job's events as plain progress objects, then close 1000."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.id = connection.id  # dropped with its socket
        self.principal = connection.principal

    def enqueue(self, message: bytes, wake: bool = True, replay: bool = False) -> None:
        frame = orjson.loads(message)
        if frame.get("event") == "job.progress":
            self.connection.enqueue(orjson.dumps(frame["data"]), replay=replay)
        elif frame.get("event") == "job.done":
            self.connection.close(NormalClosure("job finished"))


def _stream_job(job_id: str) -> Callable[[Connection], Awaitable[None]]:
    async def on_open(connection: Connection) -> None:
        services = connection.services
        assert connection.principal is not None
        job = await sql.get(services.database, job_id, owner=connection.principal.sub)
        if job is None:
            raise PolicyViolation("job not found")
        _, go_live = await services.hub.subscribe(
            _PlainProgress(connection), job_topic(job_id), Offset.start()
        )
        go_live()

    return on_open


async def job_socket(websocket: WebSocket) -> None:
    """`/ws/jobs/{job_id}` (compatibility): authenticates as /ws, streams the progress."""
    job_id = websocket.path_params["job_id"]
    services = websocket.app.state.services
    await Connection(websocket, services, ignore_frame, _stream_job(job_id)).run()


ROUTES = [WebSocketRoute("/ws/jobs/{job_id}", job_socket)]

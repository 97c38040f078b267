"""Jobs: start, status, cancel, watch; the `long_running_task` that reports progress.

Progress and the end of a job are published on the topic `job:<id>` as the events
`job.progress` and `job.done`; exactly one `job.done` is published per job, by whichever
writer moved it to its final state (the task, or a cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from taskiq import TaskiqDepends, TaskiqState

from handlers import jobs_sql as sql
from realtime.auth.principal import Principal
from realtime.bus import Offset
from realtime.bus.hub import Hub
from realtime.db import now, translate
from realtime.exceptions import (
    InvalidData,
    NormalClosure,
    NotFound,
    PolicyViolation,
    Unavailable,
)
from realtime.jobs import Jobs, Task, TaskServices, stoppable
from realtime.jobs.broker import run_again
from realtime.lifespan import Services
from realtime.packages import Context, Package, Page, Rest
from realtime.socket.connection import Connection, ignore_frame
from realtime.types import JSONObject
from schema import jobs as s

logger = logging.getLogger("handlers.jobs")
MAX_JOB_SECONDS = 3600
TASK = "long_running_task"


def job_topic(job_id: str) -> str:
    return f"job:{job_id}"


async def announce_done(hub: Hub, job_id: str, state: str, **outcome: Any) -> None:
    await hub.publish(
        job_topic(job_id), {"job_id": job_id, "state": state, **outcome}, event="job.done"
    )


async def long_running_task(
    job_id: str,
    total_steps: int,
    step_seconds: float,
    state: TaskiqState = TaskiqDepends(),  # noqa: B008 - taskiq's dependency marker
) -> dict[str, Any] | None:
    """Sleep `step_seconds` per step, reporting progress after each."""

    async def work(step: int) -> None:
        await asyncio.sleep(step_seconds)

    return await run_steps(state.services, job_id, total_steps, work)


async def run_steps(
    services: TaskServices,
    job_id: str,
    total_steps: int,
    work: Callable[[int], Awaitable[None]],
) -> dict[str, Any] | None:
    """Run (or resume, after a worker died) a job of `total_steps` steps: `work(step)`,
    then one `job.progress` event, per step; then exactly one `job.done`.

    Each run takes the job's lease; a step is recorded, then published, only while the
    lease is held, so a run presumed dead that wakes up later records and publishes
    nothing more. A redelivered run continues after the last recorded step (a step must
    be safe to redo: a run that died during it did not record it). On a worker, an outage
    of the database or the bus does not fail the job: it runs again later."""
    return await stoppable(services, _run_steps(services, job_id, total_steps, work))


async def _run_steps(
    services: TaskServices,
    job_id: str,
    total_steps: int,
    work: Callable[[int], Awaitable[None]],
) -> dict[str, Any] | None:
    """The body of `run_steps`, which a stop cancels: it records how the job ended."""
    runner = secrets.token_hex(8)
    try:
        return await _run(services, job_id, runner, total_steps, work)
    except asyncio.CancelledError:
        if services.redelivered:  # handed back at a graceful stop: not an attempt
            with contextlib.suppress(Exception):
                await sql.hand_back(services.database, job_id, runner)
        else:  # in-process: nothing will resume it
            await _end(services, job_id, runner, "FAILURE", error="interrupted: the server stopped")
        raise
    except Exception as error:
        if _outage(error) and run_again():
            logger.warning("job %s met an outage (%s); it will run again", job_id, error)
            raise
        logger.exception("job %s failed", job_id)
        try:
            await _end(services, job_id, runner, "FAILURE", error="the job failed")
        except Exception as failure:
            if not (_outage(failure) and run_again()):
                raise
        raise


def _outage(error: BaseException) -> bool:
    """The database or the bus is unreachable or timed out (not the job's own fault)."""
    return isinstance(error, Unavailable) or isinstance(translate(error), Unavailable)


async def _run(
    services: TaskServices,
    job_id: str,
    runner: str,
    total_steps: int,
    work: Callable[[int], Awaitable[None]],
) -> dict[str, Any] | None:
    claimed = await sql.claim(services.database, job_id, runner)
    if claimed is None:
        return None  # already final: cancelled, or finished by an earlier run
    done, attempts = claimed
    if attempts > services.settings.job_max_attempts:
        await _end(services, job_id, runner, "FAILURE", error="the job was interrupted too often")
        return None
    for step in range(done + 1, total_steps + 1):
        await work(step)
        if not await _step(services, job_id, runner, step, total_steps):
            return None  # cancelled, or another run took over
    result = {"steps": total_steps}
    await _end(services, job_id, runner, "SUCCESS", result=result)
    return result


async def _step(services: TaskServices, job_id: str, runner: str, step: int, total: int) -> bool:
    percent = step * 100 // total
    if not await sql.progress(services.database, job_id, runner, step, percent):
        return False
    await services.hub.publish(
        job_topic(job_id),
        {
            "job_id": job_id,
            "progress": percent,
            "step": step,
            "total_steps": total,
            # `at` (Unix seconds) lets a client show staleness and the bench measure latency
            "payload": {"message": f"step {step} of {total}", "at": time.time()},
        },
        event="job.progress",
    )
    return True


async def _end(
    services: TaskServices, job_id: str, runner: str, state: str, **outcome: Any
) -> None:
    if await sql.finish(services.database, job_id, state, runner=runner, **outcome):
        await announce_done(services.hub, job_id, state, **outcome)


LOST_TOO_OFTEN = "the job was lost from the queue too often"
NOT_QUEUED = "the job could not be queued"


async def requeue_lost(services: TaskServices, jobs: Jobs) -> None:
    """The database is the truth: a job PENDING for a whole sweep interval whose queue
    entry is gone (Redis restarted empty) is queued again. Each time counts as an attempt,
    as a run does, so a job that keeps vanishing ends in FAILURE, announced once."""
    settings = services.settings
    before = now() - timedelta(seconds=settings.job_sweep_interval)
    waiting = await sql.waiting_since(services.database, TASK, before)
    if not waiting:
        return
    queued = {str(kwargs.get("job_id")) for kwargs in await jobs.queued(TASK)}
    for job in waiting:
        if job["id"] not in queued:
            await _put_back(services, jobs, job, before)


async def _put_back(
    services: TaskServices, jobs: Jobs, job: dict[str, Any], before: datetime
) -> None:
    db, job_id = services.database, job["id"]
    if await sql.requeue(db, job_id, before, services.settings.job_max_attempts):
        logger.warning("job %s was PENDING with no queue entry: queued again", job_id)
        await jobs.kick(TASK, job_id=job_id, **job["params"])
    elif await sql.give_up(db, job_id, before, LOST_TOO_OFTEN):
        logger.warning("job %s lost from the queue too often: FAILURE", job_id)
        await announce_done(services.hub, job_id, "FAILURE", error=LOST_TOO_OFTEN)


ANY_JOB = "jobs.any"  # the grant of permissions.toml that sees every job of the tenant


async def visible(services: Services, principal: Principal, job_id: str) -> dict[str, Any] | None:
    """The job if the caller may see it: their own, or any of their tenant's with the
    `jobs.any` grant; None otherwise, exactly as if it did not exist."""
    owner = None if services.dispatcher.granted(ANY_JOB, principal.roles) else principal.sub
    return await sql.get(services.database, job_id, tenant=principal.tenant_id, owner=owner)


async def _owned(ctx: Context, job_id: str) -> dict[str, Any]:
    job = await visible(ctx.services, ctx.principal, job_id)
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
    return await queue_job(ctx, TASK, params)


async def queue_job(ctx: Context, task: str, params: dict[str, Any]) -> dict[str, Any]:
    """Record a PENDING job owned by the caller, then queue `task(job_id, **params)`."""
    job_id = secrets.token_hex(16)
    principal = ctx.principal
    db = ctx.services.database
    await sql.create(db, job_id, principal.sub, principal.tenant_id, task, params)
    try:
        await ctx.services.jobs.kick(task, job_id=job_id, **params)
    except Unavailable:
        # UNAVAILABLE means not done: end the record, so that no sweep queues it later
        # (requeue_lost) and a message that did reach the queue finds it final
        await sql.finish(db, job_id, "FAILURE", error=NOT_QUEUED)
        raise
    return {"job_id": job_id}


async def status(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return await _owned(ctx, data["job_id"])


async def cancel(ctx: Context, data: JSONObject) -> dict[str, Any]:
    job = await _owned(ctx, data["job_id"])
    if await sql.finish(ctx.services.database, job["job_id"], "CANCELLED"):
        await announce_done(ctx.services.hub, job["job_id"], "CANCELLED")
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
    principal = ctx.principal
    items, total = await sql.page(
        ctx.services.database,
        principal.sub,
        principal.tenant_id,
        page=data["page"],
        per_page=data["per_page"],
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
        # a cancel keeps the record (GET answers it CANCELLED): an action, not a DELETE
        rest=Rest("POST", "/jobs/{job_id}/cancel"),
        description="Cancel a job (owner only); its record stays, in state CANCELLED.",
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

TASKS = [Task(TASK, long_running_task, recover=requeue_lost)]


class _PlainProgress:
    """Compatibility stream: the job's events as plain progress objects, then close 1000."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.id = connection.id  # dropped with its socket
        self.principal = connection.principal

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None:
        frame = orjson.loads(message)
        if frame.get("event") == "job.progress":
            self.connection.enqueue(orjson.dumps(frame["data"]), replay=replay)
        elif frame.get("event") == "job.done":
            self.connection.close(NormalClosure("job finished"))


def _stream_job(job_id: str) -> Callable[[Connection], Awaitable[None]]:
    async def on_open(connection: Connection) -> None:
        services = connection.services
        assert connection.principal is not None
        job = await visible(services, connection.principal, job_id)
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

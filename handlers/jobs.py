"""Jobs: start, status, cancel, watch and list; `long_running_task`, the job type that
sleeps per step, reporting progress after each.

The machinery (the lease, resuming, the outage and redelivery rules, the sweep of lost
jobs, exactly one `job.done` per job) is the framework's: `realtime.jobs.steps`, bound
here to this application's records (`handlers.jobs_sql`). Another job type is a task
function calling `run_steps` and a start package calling `queue_job`; the packages below
serve every type.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq import TaskiqDepends, TaskiqState

from handlers import jobs_sql as sql
from realtime import (
    Context,
    JSONObject,
    Offset,
    Package,
    Page,
    Rest,
    StepJobs,
    job_stream,
    job_topic,
)
from realtime.exceptions import InvalidData, NotFound
from schema import jobs as s

MAX_JOB_SECONDS = 3600
TASK = "long_running_task"

JOBS = StepJobs(sql)  # the framework's jobs machinery over this application's records
run_steps = JOBS.run  # what the task of a job type calls
queue_job = JOBS.queue  # what the start package of a job type calls


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


async def start(ctx: Context, data: JSONObject) -> dict[str, Any]:
    params = {"total_steps": data["total_steps"], "step_seconds": data["step_seconds"]}
    if params["total_steps"] * params["step_seconds"] > MAX_JOB_SECONDS:
        raise InvalidData(
            f"a job may run at most {MAX_JOB_SECONDS} seconds",
            [{"path": "/", "reason": "total_steps * step_seconds is too long"}],
        )
    return await queue_job(ctx, TASK, params)


async def _owned(ctx: Context, job_id: str) -> dict[str, Any]:
    job = await JOBS.visible(ctx, job_id)
    if job is None:
        raise NotFound("job not found")  # another user's job looks exactly like none
    return job


async def status(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return await _owned(ctx, data["job_id"])


async def cancel(ctx: Context, data: JSONObject) -> dict[str, Any]:
    job_id = (await _owned(ctx, data["job_id"]))["job_id"]
    if await JOBS.cancel(ctx, job_id):
        return {"job_id": job_id, "state": "CANCELLED"}
    return {"job_id": job_id, "state": (await _owned(ctx, job_id))["state"]}  # ended before


async def watch(ctx: Context, data: JSONObject) -> dict[str, Any]:
    ctx.socket()  # served on a socket only: INVALID_DATA over REST, before any lookup
    job = await _owned(ctx, data["job_id"])
    since = data.get("since") or Offset.start()  # the whole history by default
    answer = await ctx.subscribe(job_topic(job["job_id"]), since)
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
        audited=True,
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
        audited=True,
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

TASKS = [JOBS.task(TASK, long_running_task)]  # with the sweep that queues lost jobs again

# `/ws/jobs/{job_id}` (compatibility): a job's progress as plain objects, then close 1000
ROUTES = [job_stream(JOBS)]

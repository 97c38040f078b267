"""A job that fails at its second step, loaded by the servers and workers of the job
tests (REALTIME_HANDLERS) to prove FAILURE is recorded and announced, safely worded."""

from __future__ import annotations

from typing import Any

from taskiq import TaskiqDepends, TaskiqState

from handlers.jobs import queue_job, run_steps
from realtime.jobs import Task
from realtime.packages import Context, Package
from realtime.types import JSONObject


async def failing_task(
    job_id: str,
    total_steps: int,
    state: TaskiqState = TaskiqDepends(),  # noqa: B008
) -> Any:
    async def work(step: int) -> None:
        if step == 2:
            raise RuntimeError("secret internal detail: password=hunter2")

    return await run_steps(state.services, job_id, total_steps, work)


async def start_failing(ctx: Context, data: JSONObject) -> Any:
    return await queue_job(ctx, "failing_task", {"total_steps": 3})


PACKAGES = [Package(915, "test.failing_job", start_failing)]
TASKS = [Task("failing_task", failing_task)]

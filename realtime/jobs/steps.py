"""Jobs run in steps: the lease, resuming after a worker died, the outage and redelivery
rules, the sweep that queues lost jobs again, and exactly one `job.done` per job.

Progress and the end of a job are published on the topic `job:<id>` as the events
`job.progress` and `job.done`; exactly one `job.done` is published per job, by whichever
writer moved it to its final state (the run, a cancel, or the sweep). The records live
in the application's `JobStore`; `StepJobs` binds the machinery to it, once per app::

    JOBS = StepJobs(jobs_sql)

    async def resize(job_id: str, total_steps: int, state: TaskiqState = TaskiqDepends()):
        async def work(step: int) -> None: ...  # safe to redo: see `StepJobs.run`

        return await JOBS.run(state.services, job_id, total_steps, work)

    async def start(ctx: Context, data: JSONObject) -> dict[str, Any]:
        return await JOBS.queue(ctx, "resize", {"total_steps": data["total_steps"]})

    TASKS = [JOBS.task("resize", resize)]  # and a Package for `start`

A new job type is so a task function and a start package; status, cancel, watch, the
listing and the compatibility stream (`realtime.jobs.stream`) serve every type alike.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

from databases import Database

from realtime.auth.principal import Principal
from realtime.bus import Offset
from realtime.db import now, translate
from realtime.exceptions import Unavailable
from realtime.jobs import Jobs, Task, TaskServices, stoppable
from realtime.jobs.delivery import run_again
from realtime.jobs.store import JobRecord, JobStore
from realtime.protocol import JOB_DONE, JOB_PROGRESS, JOB_TOPIC_PREFIX

if TYPE_CHECKING:
    from realtime.metrics import Metrics
    from realtime.packages import Context
    from realtime.services import Framework

logger = logging.getLogger("realtime.jobs.steps")

PROGRESS = JOB_PROGRESS  # the events of a job, on its topic job:<id>
DONE = JOB_DONE
ANY_JOB = "jobs.any"  # the grant (permissions.toml) that sees every job of the tenant
INTERRUPTED = "interrupted: the server stopped"
TOO_OFTEN = "the job was interrupted too often"
FAILED = "the job failed"  # what a client sees of a job's own error: safe to show
LOST_TOO_OFTEN = "the job was lost from the queue too often"
NOT_QUEUED = "the job could not be queued"

# what a job type does at each step; a step must be safe to redo (see StepJobs.run)
Work = Callable[[int], Awaitable[None]]
Result = dict[str, Any]


class Publisher(Protocol):
    """The hub, as far as announcing needs it (a handler's view of it is enough)."""

    async def publish(
        self, topic: str, data: Any, event: str = "message", key: str | None = None
    ) -> Offset: ...

    async def publish_user(
        self, sub: str, event: str, data: Any, *, tenant: str, unless: str | None = None
    ) -> Offset: ...


def job_topic(job_id: str) -> str:
    return f"{JOB_TOPIC_PREFIX}{job_id}"


async def announce_done(
    hub: Publisher, job_id: str, state: str, owner: tuple[str, str] | None = None, **outcome: Any
) -> None:
    """Publish the job's one `job.done` on its topic, then on its `owner`'s (tenant, sub)
    personal channel, for the owner's sockets that do not watch it ("your export is
    ready" needs no watch): call it only as the writer that ended the job."""
    data = {"job_id": job_id, "state": state, **outcome}
    topic = job_topic(job_id)
    await hub.publish(topic, data, event=DONE)
    if owner is not None:  # a socket watching the job has just been told: not twice
        tenant, sub = owner
        await hub.publish_user(sub, DONE, data, tenant=tenant, unless=topic)


@dataclass(slots=True)
class _Run:
    """One run of a job: its lease (`runner`) and, once claimed, which attempt it is."""

    runner: str
    attempts: int = 0


def _ended(metrics: Metrics | None, state: str, attempts: int = 0) -> None:
    """Count a job that reached `state`, by its one final writer."""
    if metrics is not None:
        metrics.job_ended(state, attempts)


def _metrics(ctx: Context) -> Metrics:
    # a package's services are the app's (realtime.lifespan.Services): the framework's
    # view of them has the metrics, which the handler's view does not show
    return cast("Framework", ctx.services).metrics


def outage(error: BaseException) -> bool:
    """The database or the bus is unreachable or timed out (not the job's own fault)."""
    return isinstance(error, Unavailable) or isinstance(translate(error), Unavailable)


@dataclass(frozen=True)
class StepJobs:
    """The jobs machinery over the application's records (`store`). `see_all` names the
    grant whose holders see (watch, cancel) every job of their tenant, not only theirs."""

    store: JobStore
    see_all: str = ANY_JOB

    # -- declaring and queueing --------------------------------------------------------

    def task(self, name: str, func: Callable[..., Awaitable[Any]]) -> Task:
        """The Task of a job type, with the sweep that queues its lost jobs again."""

        async def recover(services: TaskServices, jobs: Jobs) -> None:
            await self.requeue_lost(services, jobs, name)

        return Task(name, func, recover=recover)

    async def queue(self, ctx: Context, task: str, params: dict[str, Any]) -> dict[str, Any]:
        """Record a PENDING job owned by the caller, then queue `task(job_id, **params)`."""
        job_id = secrets.token_hex(16)
        principal, db = ctx.principal, ctx.services.database
        await self.store.create(db, job_id, principal.sub, principal.tenant_id, task, params)
        try:
            await ctx.services.jobs.kick(task, job_id=job_id, **params)
        except Unavailable:
            # UNAVAILABLE means not done: end the record, so that no sweep queues it later
            # (requeue_lost) and a message that did reach the queue finds it final
            if await self.store.finish(db, job_id, "FAILURE", error=NOT_QUEUED):
                _ended(_metrics(ctx), "FAILURE")
            raise
        return {"job_id": job_id}

    # -- what a caller may see and do --------------------------------------------------

    async def find(
        self, db: Database, principal: Principal, job_id: str, *, see_all: bool
    ) -> JobRecord | None:
        """The job if the caller may see it: their own, or (`see_all`) any of their
        tenant's; None otherwise, exactly as if it did not exist."""
        owner = None if see_all else principal.sub
        return await self.store.get(db, job_id, tenant=principal.tenant_id, owner=owner)

    async def visible(self, ctx: Context, job_id: str) -> JobRecord | None:
        """`find` for the caller of a package."""
        see_all = ctx.granted(self.see_all)
        return await self.find(ctx.services.database, ctx.principal, job_id, see_all=see_all)

    async def cancel(self, ctx: Context, job_id: str) -> bool:
        """End a live job CANCELLED and announce it; False if it had ended already. The
        run notices at its next step (the lease is gone) and stops."""
        db = ctx.services.database
        if not await self.store.finish(db, job_id, "CANCELLED"):
            return False
        _ended(_metrics(ctx), "CANCELLED")
        owner = await self.store.owner(db, job_id)
        await announce_done(ctx.services.hub, job_id, "CANCELLED", owner)
        return True

    # -- running -----------------------------------------------------------------------

    async def run(
        self, services: TaskServices, job_id: str, total_steps: int, work: Work
    ) -> Result | None:
        """Run (or resume, after a worker died) a job of `total_steps` steps: `work(step)`,
        then one `job.progress` event, per step; then exactly one `job.done`.

        Each run takes the job's lease; a step is recorded, then published, only while the
        lease is held, so a run presumed dead that wakes up later records and publishes
        nothing more. A redelivered run continues after the last recorded step (a step must
        be safe to redo: a run that died during it did not record it). On a worker, an
        outage of the database or the bus does not fail the job: it runs again later."""
        body = self._run_body(services, job_id, total_steps, work)
        return await stoppable(services, body)

    async def _run_body(
        self, services: TaskServices, job_id: str, total_steps: int, work: Work
    ) -> Result | None:
        """The body of `run`, which a stop cancels: it records how the job ended."""
        run = _Run(secrets.token_hex(8))
        try:
            return await self._steps(services, job_id, run, total_steps, work)
        except asyncio.CancelledError:
            if services.redelivered:  # handed back at a graceful stop: not an attempt
                await self._hand_back(services, job_id, run.runner)
            else:  # in-process: nothing will resume it
                await self._end(services, job_id, run, "FAILURE", error=INTERRUPTED)
            raise
        except Exception as error:
            await self._failed(services, job_id, run, error)
            raise

    async def _steps(
        self, services: TaskServices, job_id: str, run: _Run, total_steps: int, work: Work
    ) -> Result | None:
        claimed = await self.store.claim(services.database, job_id, run.runner)
        if claimed is None:
            return None  # already final: cancelled, or finished by an earlier run
        done, run.attempts = claimed
        if run.attempts > services.settings.job_max_attempts:
            await self._end(services, job_id, run, "FAILURE", error=TOO_OFTEN)
            return None
        for step in range(done + 1, total_steps + 1):
            await work(step)
            if not await self._step(services, job_id, run.runner, step, total_steps):
                return None  # cancelled, or another run took over
        result = {"steps": total_steps}
        await self._end(services, job_id, run, "SUCCESS", result=result)
        return result

    async def _step(
        self, services: TaskServices, job_id: str, runner: str, step: int, total: int
    ) -> bool:
        percent = step * 100 // total
        if not await self.store.progress(services.database, job_id, runner, step, percent):
            return False
        data = {
            "job_id": job_id,
            "progress": percent,
            "step": step,
            "total_steps": total,
            # `at` (Unix seconds) lets a client show staleness and the bench measure latency
            "payload": {"message": f"step {step} of {total}", "at": time.time()},
        }
        await services.hub.publish(job_topic(job_id), data, event=PROGRESS)
        return True

    async def _end(
        self, services: TaskServices, job_id: str, run: _Run, state: str, **outcome: Any
    ) -> None:
        db = services.database
        if await self.store.finish(db, job_id, state, runner=run.runner, **outcome):
            _ended(services.metrics, state, run.attempts)
            owner = await self.store.owner(db, job_id)
            await announce_done(services.hub, job_id, state, owner, **outcome)

    async def _failed(
        self, services: TaskServices, job_id: str, run: _Run, error: Exception
    ) -> None:
        """A run raised: on a worker an outage runs it again later (the message is not
        acknowledged); anything else ends the job FAILURE, worded safely. The caller
        re-raises `error` either way, so that taskiq records the task as failed."""
        if outage(error) and run_again():
            logger.warning("job %s met an outage (%s); it will run again", job_id, error)
            return
        logger.exception("job %s failed", job_id, exc_info=error)
        try:
            await self._end(services, job_id, run, "FAILURE", error=FAILED)
        except Exception as failure:
            if not (outage(failure) and run_again()):
                raise

    async def _hand_back(self, services: TaskServices, job_id: str, runner: str) -> None:
        """Undo this run's attempt at a graceful stop. A database (or bus) outage may be
        why the worker stops: then the attempt stays counted, as a crash's would, which is
        worth a warning but must not turn the stop into an error. Anything else is a bug:
        logged with its traceback; the stop goes on either way (the run is cancelled)."""
        try:
            await self.store.hand_back(services.database, job_id, runner)
        except Exception as error:
            if outage(error):
                logger.warning(
                    "job %s: not handed back (%s); this run counts as an attempt", job_id, error
                )
            else:
                logger.exception("job %s: handing it back failed", job_id)

    # -- the sweep ---------------------------------------------------------------------

    async def requeue_lost(self, services: TaskServices, jobs: Jobs, task: str) -> None:
        """The database is the truth: a job of `task` PENDING for a whole sweep interval
        whose queue entry is gone (Redis restarted empty) is queued again. Each time counts
        as an attempt, as a run does, so a job that keeps vanishing ends in FAILURE,
        announced once."""
        before = now() - timedelta(seconds=services.settings.job_sweep_interval)
        waiting = await self.store.waiting_since(services.database, task, before)
        if not waiting:
            return
        queued = {str(kwargs.get("job_id")) for kwargs in await jobs.queued(task)}
        for job in waiting:
            if job["id"] not in queued:
                await self._put_back(services, jobs, task, job, before)

    async def _put_back(
        self, services: TaskServices, jobs: Jobs, task: str, job: JobRecord, before: datetime
    ) -> None:
        db, job_id = services.database, job["id"]
        if await self.store.requeue(db, job_id, before, services.settings.job_max_attempts):
            logger.warning("job %s was PENDING with no queue entry: queued again", job_id)
            await jobs.kick(task, job_id=job_id, **job["params"])
        elif await self.store.give_up(db, job_id, before, LOST_TOO_OFTEN):
            logger.warning("job %s lost from the queue too often: FAILURE", job_id)
            _ended(services.metrics, "FAILURE")
            owner = await self.store.owner(db, job_id)
            await announce_done(services.hub, job_id, "FAILURE", owner, error=LOST_TOO_OFTEN)

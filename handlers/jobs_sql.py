"""All SQL of jobs: this module is the application's `realtime.jobs.store.JobStore`
(handlers.jobs hands it to the framework's `StepJobs`), plus the listing. State changes
are conditional single statements, so exactly one writer moves a job to a final state
(and announces it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from databases import Database

from realtime import Prepared, now, utc
from schema.tables import jobs as t

LIVE = ("PENDING", "STARTED")


def _job(record: Any) -> dict[str, Any]:
    params = orjson.loads(record["params"])
    result = record["result"]
    return {
        "job_id": record["id"],
        "state": record["state"],
        "progress": record["progress"],
        "result": orjson.loads(result) if result is not None else None,
        "error": record["error"],
        "total_steps": params.get("total_steps"),
        "created_at": utc(record["created_at"]),
        "updated_at": utc(record["updated_at"]),
    }


async def create(
    db: Database, job_id: str, owner: str, tenant: str, task: str, params: dict[str, Any]
) -> None:
    stamp = now()
    await db.execute(
        t.insert().values(
            id=job_id,
            owner_sub=owner,
            tenant_id=tenant,
            task=task,
            params=orjson.dumps(params).decode(),
            state="PENDING",
            progress=0,
            created_at=stamp,
            updated_at=stamp,
        )
    )


async def get(
    db: Database, job_id: str, *, tenant: str, owner: str | None = None
) -> dict[str, Any] | None:
    """The job, if it is in `tenant` and (when given) belongs to `owner`."""
    where = [t.c.id == job_id, t.c.tenant_id == tenant]
    if owner is not None:
        where.append(t.c.owner_sub == owner)
    record = await db.fetch_one(sa.select(t).where(*where))
    return _job(record) if record else None


async def owner(db: Database, job_id: str) -> tuple[str, str] | None:
    """Who started the job, (tenant, sub): their personal channel gets its `job.done`."""
    found = await db.fetch_one(sa.select(t.c.tenant_id, t.c.owner_sub).where(t.c.id == job_id))
    return None if found is None else (str(found["tenant_id"]), str(found["owner_sub"]))


async def page(
    db: Database, owner: str, tenant: str, *, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    """The jobs of `owner` in `tenant`: the same `sub` in another tenant is someone else."""
    mine = (t.c.owner_sub == owner, t.c.tenant_id == tenant)
    total = await db.fetch_val(sa.select(sa.func.count()).select_from(t).where(*mine))
    query = (
        sa.select(t)
        .where(*mine)
        .order_by(t.c.created_at.desc(), t.c.id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return [_job(r) for r in await db.fetch_all(query)], int(total)


async def waiting_since(
    db: Database, task: str, before: datetime, limit: int = 100
) -> list[dict[str, Any]]:
    """Jobs of `task` still PENDING (never taken) and untouched since `before`, oldest first:
    those whose queue entry may have vanished. `{id, params, attempts}` each."""
    query = (
        sa.select(t.c.id, t.c.params, t.c.attempts)
        .where(t.c.task == task, t.c.state == "PENDING", t.c.updated_at < before)
        .order_by(t.c.updated_at)
        .limit(limit)
    )
    found = await db.fetch_all(query)
    return [
        {"id": r["id"], "params": orjson.loads(r["params"]), "attempts": r["attempts"]}
        for r in found
    ]


async def requeue(db: Database, job_id: str, before: datetime, max_attempts: int) -> bool:
    """Count one more attempt for a lost PENDING job, if queueing it again leaves room for
    its run within `max_attempts`; False if that is used up, or if another worker touched
    it since `before` (that one queues it: the update is the lease of this sweep)."""
    query = (
        t.update()
        .where(*_lost(job_id, before), t.c.attempts + 2 <= max_attempts)
        .values(attempts=t.c.attempts + 1, updated_at=now())
        .returning(t.c.id)
    )
    return await db.fetch_one(query) is not None


async def give_up(db: Database, job_id: str, before: datetime, error: str) -> bool:
    """A lost PENDING job with no attempt left ends in FAILURE; True for the one writer
    that moved it (and so announces it)."""
    query = (
        t.update()
        .where(*_lost(job_id, before))
        .values(state="FAILURE", error=error, updated_at=now())
        .returning(t.c.id)
    )
    return await db.fetch_one(query) is not None


def _lost(job_id: str, before: datetime) -> tuple[sa.ColumnElement[bool], ...]:
    return (t.c.id == job_id, t.c.state == "PENDING", t.c.updated_at < before)


async def claim(db: Database, job_id: str, runner: str) -> tuple[int, int] | None:
    """Begin a run: take the job's lease (PENDING or STARTED -> STARTED, runner = this run)
    and return (last recorded step, runs begun including this one); None when the job is
    already final (cancelled, or finished by an earlier run)."""
    query = (
        t.update()
        .where(t.c.id == job_id, t.c.state.in_(LIVE))
        .values(state="STARTED", runner=runner, attempts=t.c.attempts + 1, updated_at=now())
        .returning(t.c.step, t.c.attempts)
    )
    record = await db.fetch_one(query)
    return (record["step"], record["attempts"]) if record else None


async def hand_back(db: Database, job_id: str, runner: str) -> None:
    """A run stopped on purpose (a worker's graceful stop): its claim does not count as
    an attempt, so deploys do not use up a job's attempts."""
    query = (
        t.update()
        .where(t.c.id == job_id, t.c.state == "STARTED", t.c.runner == runner)
        .values(attempts=t.c.attempts - 1)
    )
    await db.execute(query)


# the statement of every step of every job: built and compiled once
_PROGRESS = Prepared(
    t.update()
    .where(
        t.c.id == sa.bindparam("the_job"),
        t.c.state == "STARTED",
        t.c.runner == sa.bindparam("the_runner"),
    )
    .values(
        step=sa.bindparam("new_step"),
        progress=sa.bindparam("new_progress"),
        updated_at=sa.bindparam("stamp"),
    )
    .returning(t.c.id)
)


async def progress(db: Database, job_id: str, runner: str, step: int, percent: int) -> bool:
    """Record a step; False if the job was cancelled meanwhile or another run holds the
    lease (this run was presumed dead and the job redelivered)."""
    found = await _PROGRESS.fetch_one(
        db, the_job=job_id, the_runner=runner, new_step=step, new_progress=percent, stamp=now()
    )
    return found is not None


async def finish(
    db: Database,
    job_id: str,
    state: str,
    *,
    result: Any = None,
    error: str | None = None,
    runner: str | None = None,
) -> bool:
    """Move a live job to a final state; False if another writer got there first. A run
    passes its lease (`runner`) so that a fenced-out run cannot finish the job."""
    values: dict[str, Any] = {"state": state, "updated_at": now(), "error": error}
    if result is not None:
        values["result"] = orjson.dumps(result).decode()
    if state == "SUCCESS":
        values["progress"] = 100
    where = [t.c.id == job_id, t.c.state.in_(LIVE)]
    if runner is not None:
        where.append(t.c.runner == runner)
    query = t.update().where(*where).values(**values).returning(t.c.id)
    return await db.fetch_one(query) is not None

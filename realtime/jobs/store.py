"""The job records, as the jobs machinery (`realtime.jobs.steps`) needs them.

The framework runs, fences, requeues and announces jobs, but the application owns their
table (`schema/`, Alembic), so it owns their SQL too: `JobStore` is the seam between the
two. Every operation takes the database first, so a module of plain functions implements
it (the application's `handlers/jobs_sql.py`): the store is declared at import time, when
no database exists yet, and the framework passes the one it holds (the app's, or a
worker's) where the job runs.

Every state change is one conditional statement, so that exactly one writer moves a job
to a final state, and that writer (and only it) announces the end.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from databases import Database

# A job as the store answers it: a JSON object with at least `job_id` and `state`.
JobRecord = dict[str, Any]


class JobStore(Protocol):
    """The records of jobs, one per job id; states PENDING -> STARTED -> SUCCESS,
    FAILURE or CANCELLED (final). `runner` is a run's lease: a write that names a runner
    applies only while the job is STARTED by that runner."""

    async def create(
        self, db: Database, job_id: str, owner: str, tenant: str, task: str, params: dict[str, Any]
    ) -> None:
        """Record a PENDING job of `task(job_id, **params)`, owned by `owner` in `tenant`."""

    async def get(
        self, db: Database, job_id: str, *, tenant: str, owner: str | None = None
    ) -> JobRecord | None:
        """The job, if it is in `tenant` and (when given) belongs to `owner`."""

    async def owner(self, db: Database, job_id: str) -> tuple[str, str] | None:
        """The job's owner as (tenant, sub); None if there is no such job."""

    async def claim(self, db: Database, job_id: str, runner: str) -> tuple[int, int] | None:
        """Take the lease (PENDING or STARTED -> STARTED by `runner`, one more attempt):
        (last recorded step, attempts including this one); None if already final."""

    async def progress(
        self, db: Database, job_id: str, runner: str, step: int, percent: int
    ) -> bool:
        """Record a step under the lease; False if the lease is lost (cancelled, or taken
        over by another run)."""

    async def finish(
        self,
        db: Database,
        job_id: str,
        state: str,
        *,
        result: Any = None,
        error: str | None = None,
        runner: str | None = None,
    ) -> bool:
        """Move a live job to a final state (under the lease when `runner` is given);
        True for the one writer that moved it."""

    async def hand_back(self, db: Database, job_id: str, runner: str) -> None:
        """Undo the attempt of a run stopped on purpose (a worker's graceful stop)."""

    async def waiting_since(self, db: Database, task: str, before: datetime) -> list[JobRecord]:
        """Jobs of `task` PENDING and untouched since `before`: `{id, params, attempts}`."""

    async def requeue(self, db: Database, job_id: str, before: datetime, max_attempts: int) -> bool:
        """Count one attempt more for a lost PENDING job if that leaves room for its run
        within `max_attempts` (the sweep's lease: False if another sweep touched it)."""

    async def give_up(self, db: Database, job_id: str, before: datetime, error: str) -> bool:
        """End a lost PENDING job in FAILURE; True for the one writer that moved it."""

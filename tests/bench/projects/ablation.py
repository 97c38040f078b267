"""Diagnostic only (`python -m tests.bench.projects --ablate-sql`): realtime with a cheaper
`handlers.projects_sql.page`, to measure what the SQL layer costs the server.

    uvicorn --factory tests.bench.projects.ablation:create_app

The replacement runs the same two statements as fixed SQL strings straight on asyncpg,
on one pooled connection (`Database.connection()`): no SQLAlchemy statement building or
compiling per call, no `databases` record wrapper, one pool acquire/release (and so one
`Connection.reset()` round trip) instead of two. Same rows, same dicts, same `total`;
any other kind of list (search, include_deleted, oldest first) goes to the original.
Nothing else in the server changes. It is a measurement, not a proposed patch.

Superseded: since migration 0004 and `realtime.db.Prepared`, `projects_sql.page` itself
runs compiled-once statements on asyncpg and reads the total from `project_counts`; this
replacement still runs the first measurement's `count(*)`, so it is now *slower* than the
product. It stays only to reproduce the history table of docs/bench-projects.md.
"""

from __future__ import annotations

from typing import Any

from databases import Database
from starlette.applications import Starlette

import handlers.projects_sql as projects_sql
from realtime.app import create_app as create_realtime_app

COUNT = "SELECT count(*) FROM projects WHERE tenant_id = $1 AND is_deleted = false"
PAGE = (
    "SELECT id, name, description, created_at, updated_at, is_deleted, deleted_at "
    "FROM projects WHERE tenant_id = $1 AND is_deleted = false "
    "ORDER BY id DESC LIMIT $2 OFFSET $3"
)
original_page = projects_sql.page


async def page(
    db: Database,
    tenant: str,
    *,
    page: int,
    per_page: int,
    search: str | None,
    include_deleted: bool,
    order: str,
) -> tuple[list[dict[str, Any]], int]:
    if search or include_deleted or order != "newest" or db.url.dialect != "postgresql":
        return await original_page(
            db,
            tenant,
            page=page,
            per_page=per_page,
            search=search,
            include_deleted=include_deleted,
            order=order,
        )
    async with db.connection() as connection:
        raw = connection.raw_connection
        total = await raw.fetchval(COUNT, tenant)
        rows = await raw.fetch(PAGE, tenant, per_page, (page - 1) * per_page)
    return [projects_sql._project(row) for row in rows], int(total)


def create_app() -> Starlette:
    projects_sql.page = page  # handlers.projects calls it as `sql.page(...)`
    return create_realtime_app()

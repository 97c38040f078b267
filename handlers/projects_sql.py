"""All SQL of projects. Every write is one statement, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime import Prepared, contains, now, utc
from schema.tables import project_counts as c
from schema.tables import projects as t

COLUMNS = (
    t.c.id,
    t.c.tenant_id,
    t.c.name,
    t.c.description,
    t.c.created_at,
    t.c.updated_at,
    t.c.is_deleted,
    t.c.deleted_at,
)


def _project(record: Any) -> dict[str, Any]:
    return {
        "id": record["id"],
        "tenant_id": record["tenant_id"],
        "name": record["name"],
        "description": record["description"],
        "created_at": utc(record["created_at"]),
        "updated_at": utc(record["updated_at"]),
        "is_deleted": bool(record["is_deleted"]),
        "deleted_at": utc(record["deleted_at"]),
    }


def _mine(tenant: str, project_id: int) -> sa.ColumnElement[bool]:
    return sa.and_(t.c.id == project_id, t.c.tenant_id == tenant)


async def create(
    db: Database, tenant: str, name: str, description: str | None, key: str | None = None
) -> dict[str, Any]:
    stamp = now()
    query = (
        t.insert()
        .values(
            tenant_id=tenant,
            name=name,
            description=description,
            created_at=stamp,
            updated_at=stamp,
            is_deleted=False,
            idempotency_key=key,
        )
        .returning(*COLUMNS)
    )
    return _project(await db.fetch_one(query))


async def by_idempotency_key(db: Database, tenant: str, key: str) -> dict[str, Any] | None:
    """The project a create with this key made in this tenant (deleted or not)."""
    mine = sa.and_(t.c.tenant_id == tenant, t.c.idempotency_key == key)
    record = await db.fetch_one(sa.select(*COLUMNS).where(mine))
    return _project(record) if record else None


async def get(db: Database, tenant: str, project_id: int) -> dict[str, Any] | None:
    live = sa.and_(_mine(tenant, project_id), t.c.is_deleted == sa.false())
    record = await db.fetch_one(sa.select(*COLUMNS).where(live))
    return _project(record) if record else None


def _page_statements(include_deleted: bool, search: bool, order: str) -> tuple[Prepared, Prepared]:
    """The count and the page of one shape of list, built once per shape."""
    where = [t.c.tenant_id == sa.bindparam("tenant")]
    if not include_deleted:
        where.append(t.c.is_deleted == sa.false())
    if search:
        where.append(t.c.name.ilike(sa.bindparam("search"), escape="\\"))
    ordering = t.c.id.desc() if order == "newest" else t.c.id.asc()
    count = sa.select(sa.func.count()).select_from(t).where(*where)
    if not search:  # the tenant's count, kept by triggers (migration 0004): one row read
        kept = c.c.total if include_deleted else c.c.live
        mine = sa.select(kept).where(c.c.tenant_id == sa.bindparam("tenant")).scalar_subquery()
        count = sa.select(sa.func.coalesce(mine, 0))
    rows = (
        sa.select(*COLUMNS)
        .where(*where)
        .order_by(ordering)
        .limit(sa.bindparam("limit"))
        .offset(sa.bindparam("offset"))
    )
    return Prepared(count), Prepared(rows)


_PAGES = {
    (deleted, search, order): _page_statements(deleted, search, order)
    for deleted in (False, True)
    for search in (False, True)
    for order in ("newest", "oldest")
}


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
    count, rows = _PAGES[include_deleted, bool(search), "newest" if order == "newest" else "oldest"]
    values: dict[str, Any] = {"tenant": tenant}
    if search:
        values["search"] = contains(search)
    total = await count.fetch_val(db, **values)
    found = await rows.fetch_all(db, **values, limit=per_page, offset=(page - 1) * per_page)
    return [_project(r) for r in found], int(total)


async def update(
    db: Database, tenant: str, project_id: int, changes: dict[str, Any]
) -> dict[str, Any] | None:
    stamp = now()
    # updated_at never goes backwards, whichever of two concurrent updates commits last
    monotonic = sa.case((t.c.updated_at > stamp, t.c.updated_at), else_=stamp)
    query = (
        t.update()
        .where(_mine(tenant, project_id), t.c.is_deleted == sa.false())
        .values(**changes, updated_at=monotonic)
        .returning(*COLUMNS)
    )
    record = await db.fetch_one(query)
    return _project(record) if record else None


async def soft_delete(db: Database, tenant: str, project_id: int) -> dict[str, Any] | None:
    """Idempotent: a second delete keeps (and returns) the first deleted_at."""
    query = (
        t.update()
        .where(_mine(tenant, project_id))
        .values(is_deleted=True, deleted_at=sa.func.coalesce(t.c.deleted_at, now()))
        .returning(t.c.id, t.c.deleted_at)
    )
    record = await db.fetch_one(query)
    return {"id": record["id"], "deleted_at": utc(record["deleted_at"])} if record else None

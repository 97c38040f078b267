"""All SQL of authors."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime import contains, now, utc
from schema.tables import authors as t

COLUMNS = (t.c.id, t.c.name, t.c.created_at)
LIST_LIMIT = 1000


def _author(record: Any) -> dict[str, Any]:
    return {"id": record["id"], "name": record["name"], "created_at": utc(record["created_at"])}


async def create(db: Database, name: str) -> dict[str, Any]:
    query = t.insert().values(name=name, created_at=now()).returning(*COLUMNS)
    return _author(await db.fetch_one(query))


async def all_authors(db: Database) -> list[dict[str, Any]]:
    query = sa.select(*COLUMNS).order_by(t.c.id).limit(LIST_LIMIT)
    return [_author(r) for r in await db.fetch_all(query)]


async def page(
    db: Database, *, page: int, per_page: int, name: str | None
) -> tuple[list[dict[str, Any]], int]:
    where = [t.c.name.ilike(contains(name), escape="\\")] if name else []
    total = await db.fetch_val(sa.select(sa.func.count()).select_from(t).where(*where))
    query = (
        sa.select(*COLUMNS)
        .where(*where)
        .order_by(t.c.id)
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return [_author(r) for r in await db.fetch_all(query)], int(total)

"""All SQL of the audit log: the store the framework writes through (realtime.audit's
`AuditStore`: `write`), and the page audit.list reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from databases import Database

from realtime import AuditRow, utc
from schema.tables import audit_log as t

COLUMNS = (
    t.c.id,
    t.c.at,
    t.c.tenant_id,
    t.c.sub,
    t.c.package,
    t.c.target,
    t.c.transport,
    t.c.req_id,
    t.c.node,
    t.c.outcome,
)


async def write(db: Database, rows: Sequence[AuditRow]) -> None:
    """One multi-row INSERT: the batch is stored whole or not at all."""
    await db.execute(t.insert().values([row._asdict() for row in rows]))


NAMES = tuple(str(c.name) for c in COLUMNS)  # plain str: orjson takes no subclass as a key


def _entry(record: Any) -> dict[str, Any]:
    return {**{name: record[name] for name in NAMES}, "at": utc(record["at"])}


async def page(
    db: Database,
    tenant: str,
    *,
    page: int,
    per_page: int,
    sub: str | None = None,
    package: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One tenant's rows, newest first, filtered by sub, package and [since, until)."""
    where = [t.c.tenant_id == tenant]
    if sub is not None:
        where.append(t.c.sub == sub)
    if package is not None:
        where.append(t.c.package == package)
    if since is not None:
        where.append(t.c.at >= since)
    if until is not None:
        where.append(t.c.at < until)
    total = await db.fetch_val(sa.select(sa.func.count()).select_from(t).where(*where))
    query = (
        sa.select(*COLUMNS)
        .where(*where)
        .order_by(t.c.at.desc(), t.c.id.desc())
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    return [_entry(r) for r in await db.fetch_all(query)], int(total)

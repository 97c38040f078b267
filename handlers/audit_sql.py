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


# PostgreSQL: one statement whatever the batch's size, its columns as arrays. SQLAlchemy's
# multi-row VALUES cost the server ~120 us of CPU per row to compile and bind (measured,
# docs/benchmarks.md), about a tenth of a projects.create; this costs a few us per row.
_FIELDS = AuditRow._fields  # the statement's parameters, in the table's column order
UNNEST = sa.text(
    "INSERT INTO audit_log (at, tenant_id, sub, package, target, transport, req_id, node, "
    "outcome) SELECT * FROM unnest(CAST(:at AS timestamptz[]), CAST(:tenant_id AS varchar[]), "
    "CAST(:sub AS varchar[]), CAST(:package AS varchar[]), CAST(:target AS varchar[]), "
    "CAST(:transport AS varchar[]), CAST(:req_id AS varchar[]), CAST(:node AS varchar[]), "
    "CAST(:outcome AS varchar[]))"
)


async def write(db: Database, rows: Sequence[AuditRow]) -> None:
    """One INSERT: the batch is stored whole or not at all."""
    if db.url.dialect == "postgresql":
        columns = zip(*rows, strict=True)
        arrays = dict(zip(_FIELDS, map(list, columns), strict=True))
        await db.execute(UNNEST.bindparams(**arrays))
    else:  # the embedded default (SQLite): a multi-row VALUES
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

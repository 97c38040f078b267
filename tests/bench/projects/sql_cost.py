"""Client CPU per `projects_sql.page` call, against cheaper ways to run the same SQL.

    python -m tests.bench.projects.sql_cost [--database-url URL] [--calls 1500]

One coroutine calls each variant in a loop (no concurrency, no server, no socket) and
reports the best of three `time.process_time()` measurements per call: what the
database layer costs the server's CPU for one `projects.list` page. Diagnostic only.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from databases import Database
from databases.backends.common.records import create_column_maps

from handlers import projects_sql as sql
from schema.tables import projects as t
from tests.bench.common.runner import run
from tests.bench.projects import database
from tests.bench.projects.ablation import COUNT, PAGE
from tests.bench.projects.database import DEFAULT_URL, PER_PAGE

Call = Callable[[int], Awaitable[Any]]


def variants(db: Database, tenant: str) -> dict[str, Call]:
    where = [t.c.tenant_id == tenant, t.c.is_deleted == sa.false()]

    async def today(i: int) -> Any:
        return await sql.page(
            db,
            tenant,
            page=i % 50 + 1,
            per_page=PER_PAGE,
            search=None,
            include_deleted=False,
            order="newest",
        )

    async def one_connection(i: int) -> Any:
        async with db.connection() as conn:
            total = await conn.fetch_val(sa.select(sa.func.count()).select_from(t).where(*where))
            query = sa.select(*sql.COLUMNS).where(*where).order_by(t.c.id.desc())
            rows = await conn.fetch_all(query.limit(PER_PAGE).offset((i % 50) * PER_PAGE))
        return [sql._project(r) for r in rows], total

    async def raw_two(i: int) -> Any:
        async with db.connection() as conn:
            total = await conn.raw_connection.fetchval(COUNT, tenant)
        async with db.connection() as conn:
            rows = await conn.raw_connection.fetch(PAGE, tenant, PER_PAGE, (i % 50) * PER_PAGE)
        return [sql._project(r) for r in rows], total

    async def raw_one(i: int) -> Any:
        async with db.connection() as conn:
            total = await conn.raw_connection.fetchval(COUNT, tenant)
            rows = await conn.raw_connection.fetch(PAGE, tenant, PER_PAGE, (i % 50) * PER_PAGE)
        return [sql._project(r) for r in rows], total

    async def compile_only(i: int) -> Any:
        """What databases does before any I/O: build, compile, map the result columns."""
        dialect = db._backend._dialect  # type: ignore[attr-defined]
        count = sa.select(sa.func.count()).select_from(t).where(*where)
        query = sa.select(*sql.COLUMNS).where(*where).order_by(t.c.id.desc())
        for statement in (count, query.limit(PER_PAGE).offset((i % 50) * PER_PAGE)):
            compiled = statement.compile(
                dialect=dialect, compile_kwargs={"render_postcompile": True}
            )
            create_column_maps(compiled._result_columns)

    async def select_one(i: int) -> Any:
        async with db.connection() as conn:
            return await conn.raw_connection.fetchval("SELECT 1")

    return {
        "projects_sql.page as it is (databases + SQLAlchemy Core, 2 pool acquisitions)": today,
        "the same statements through databases on one acquired connection": one_connection,
        "fixed SQL strings on raw asyncpg, 2 acquisitions": raw_two,
        "fixed SQL strings on raw asyncpg, 1 acquisition (ablation.py)": raw_one,
        "(part of the first: building + compiling the 2 statements, no I/O)": compile_only,
        "(for scale: 1 acquisition + SELECT 1)": select_one,
    }


async def measure(url: str, calls: int) -> None:
    await database.prepare(url)
    db = Database(url, min_size=1, max_size=2)
    await db.connect()
    try:
        for label, call in variants(db, database.TENANT).items():
            for i in range(100):
                await call(i)
            best = float("inf")
            for _ in range(3):
                started = time.process_time()
                for i in range(calls):
                    await call(i)
                best = min(best, (time.process_time() - started) / calls)
            print(f"{best * 1e6:7.0f} us CPU per call  {label}", flush=True)
    finally:
        await db.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.projects.sql_cost")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--calls", type=int, default=1500)
    args = parser.parse_args()
    run(measure(args.database_url, args.calls))


if __name__ == "__main__":
    main()

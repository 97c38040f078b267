"""The bench database: created if missing, migrated with `realtime migrate`, seeded.

The seed is one INSERT over `generate_series`, interleaved so that the list query has to
use the index to skip the other rows: per 13 consecutive ids, 10 live projects of tenant
`bench`, 2 of tenant `other` and 1 soft-deleted project of `bench`. With the default of
13,000 rows that is 10,000 live `bench` projects (500 pages of 20), 2,000 `other` and
1,000 deleted. Then VACUUM ANALYZE, so the planner has statistics and the count can be
an index-only scan, as on any database that autovacuum has visited.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.bench.common import ROOT

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/realtime_bench"
TENANT = "bench"
PER_PAGE = 20  # the page size every scenario asks for
OTHER_TENANT = "other"
SEED = """
INSERT INTO projects
    (tenant_id, name, description, created_at, updated_at, is_deleted, deleted_at)
SELECT
    CASE WHEN g % 13 IN (1, 2) THEN $2 ELSE $1 END,
    'Project ' || g,
    'Seeded project number ' || g || ' for the projects.list benchmark',
    t0 + g * interval '1 second',
    t0 + g * interval '1 second',
    g % 13 = 0,
    CASE WHEN g % 13 = 0 THEN t0 + (g + 1) * interval '1 second' END
FROM generate_series(1, $3::int) AS g, (SELECT timestamptz '2024-01-01 00:00:00+00' AS t0) s
"""


@dataclass(frozen=True)
class Seeded:
    live: int  # live projects of TENANT: what `total` must be
    other: int
    deleted: int


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _admin_dsn(url: str) -> str:
    """The same server, database `postgres`, in asyncpg's scheme."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(url: str) -> None:
    name = database_name(url)
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing a database name that is not a plain identifier: {name!r}")
    admin = await asyncpg.connect(_admin_dsn(url))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def migrate(url: str) -> None:
    """`realtime migrate` against `url`, the way an operator runs it."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
    }
    cli = Path(sys.executable).with_name("realtime")
    command = [str(cli), "migrate"] if cli.exists() else [sys.executable, "-m", "realtime.cli"]
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=120)


async def seed(url: str, rows: int = 13_000) -> Seeded:
    connection = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await connection.execute("TRUNCATE projects RESTART IDENTITY")
        await connection.execute(SEED, TENANT, OTHER_TENANT, rows)
        await connection.execute("VACUUM ANALYZE projects")
        counts = await connection.fetchrow(
            """SELECT
                count(*) FILTER (WHERE tenant_id = $1 AND NOT is_deleted) AS live,
                count(*) FILTER (WHERE tenant_id = $2) AS other,
                count(*) FILTER (WHERE is_deleted) AS deleted
            FROM projects""",
            TENANT,
            OTHER_TENANT,
        )
    finally:
        await connection.close()
    return Seeded(counts["live"], counts["other"], counts["deleted"])


async def prepare(url: str, rows: int = 13_000) -> Seeded:
    await create_database(url)
    migrate(url)
    return await seed(url, rows)

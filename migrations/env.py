"""Alembic environment: the target metadata is schema.tables; the URL is the one
`realtime migrate` (realtime.migrate) passes, already in SQLAlchemy's spelling. Run by
hand (`alembic upgrade head` from this folder), it reads `sqlalchemy.url` or
DATABASE_URL. It imports `schema` only, never the framework."""

from __future__ import annotations

import asyncio
import os

import sqlalchemy as sa
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from schema.tables import metadata

config = context.config


def _url() -> str:
    url = config.attributes.get("sqlalchemy_url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("migrations: no database URL (set DATABASE_URL, or run realtime migrate)")
    for prefix in ("postgresql://", "postgres://"):  # asyncpg, as the server uses
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


url = _url()


def run_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True,
                      render_as_batch=is_sqlite(url))
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: sa.Connection) -> None:
    # realtime.migrate.upgrade passes a callback to report each migration it applied
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=is_sqlite(url),
                      on_version_apply=config.attributes.get("on_version_apply") or ())
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_online() -> None:
    if is_sqlite(url):
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_offline()
else:
    run_online()

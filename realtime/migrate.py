"""Alembic, driven from settings: `realtime migrate`, the start-up check and auto-upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from databases import Database

from realtime.db import ensure_directory, open_database, sqlalchemy_url
from realtime.exceptions import ConfigError
from realtime.settings import Settings


def alembic_config(settings: Settings) -> Config:
    if not Path(settings.migrations_dir, "env.py").exists():
        raise ConfigError(f"REALTIME_MIGRATIONS: no Alembic env.py in {settings.migrations_dir}")
    config = Config()
    config.set_main_option("script_location", settings.migrations_dir)
    # migrations/env.py imports only `schema`: it gets the URL ready for SQLAlchemy
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(settings.database)
    return config


def upgrade(settings: Settings, revision: str = "head", sql: bool = False) -> list[str]:
    """Migrate up to `revision`; the migrations applied, as `<revision>: <description>`
    in order (none when the schema was already there; none either with `sql`, which only
    writes the statements)."""
    if not sql:
        ensure_directory(settings.database)
    config = alembic_config(settings)
    applied: list[str] = []

    def record(*, step: Any, **_: Any) -> None:
        applied.append(f"{step.up_revision.revision}: {step.up_revision.doc}")

    config.attributes["on_version_apply"] = record
    command.upgrade(config, revision, sql=sql)
    return applied


def head_revision(settings: Settings) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


async def current_revision(database: Database) -> str | None:
    try:
        value = await database.fetch_val("SELECT version_num FROM alembic_version")
    except (asyncpg.UndefinedTableError, sqlite3.OperationalError):
        return None
    return str(value) if value is not None else None


async def check_schema(settings: Settings, database: Database) -> None:
    """Refuse to serve a database whose schema is behind the code."""
    head, current = head_revision(settings), await current_revision(database)
    if current != head:
        raise ConfigError(
            f"DATABASE_URL: the schema is at revision {current or 'none'}, the code needs "
            f"{head}: run `realtime migrate`"
        )


async def prepare_database(settings: Settings) -> None:
    """Before serving: migrate the embedded default, or check a configured database."""
    if settings.database_url is None:
        upgrade(settings)
    async with open_database(settings) as database:
        await check_schema(settings, database)

"""Alembic, driven from settings: `realtime migrate`, the start-up check and auto-upgrade.

Alembic (with Mako, ~11 MiB) is imported only to migrate. Whether a database is at the
code's head is read without it: the head comes from the revision files' `revision` and
`down_revision` literals (`script_heads`, falling back on Alembic when a file is not
that simple), the database's from its `alembic_version` table. So a server whose schema
is already there never loads Alembic (docs/benchmarks.md, Idle memory).
"""

from __future__ import annotations

import ast
import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from databases import Database

from realtime.db import asyncpg_errors, ensure_directory, open_database, sqlalchemy_url
from realtime.exceptions import ConfigError
from realtime.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(settings: Settings) -> Config:
    from alembic.config import Config

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
    from alembic import command

    if not sql:
        ensure_directory(settings.database)
    config = alembic_config(settings)
    applied: list[str] = []

    def record(*, step: Any, **_: Any) -> None:
        applied.append(f"{step.up_revision.revision}: {step.up_revision.doc}")

    config.attributes["on_version_apply"] = record
    command.upgrade(config, revision, sql=sql)
    return applied


def _literal(tree: ast.Module, name: str) -> Any:
    """The value of a module-level `name = <literal>` (annotated or not); KeyError if the
    module has none, ValueError if it is not a literal."""
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            value = getattr(node, "value", None)
            if value is None:
                raise ValueError(name)
            return ast.literal_eval(value)
    raise KeyError(name)


def script_heads(migrations_dir: str) -> set[str] | None:
    """The head revisions of `migrations_dir/versions`, from each file's literals (those
    no other revision names as its `down_revision`); None when a file cannot be read
    that way (then only Alembic can say)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in Path(migrations_dir, "versions").glob("*.py"):
        try:
            tree = ast.parse(path.read_bytes())
            revision, down = _literal(tree, "revision"), _literal(tree, "down_revision")
        except KeyError:
            continue  # not a revision file
        except (ValueError, SyntaxError):
            return None
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        downs.update([down] if isinstance(down, str) else down or ())
    return revisions - downs


def head_revision(settings: Settings) -> str | None:
    heads = script_heads(settings.migrations_dir)
    if heads is not None and len(heads) == 1:
        return next(iter(heads))
    from alembic.script import ScriptDirectory  # several heads, or files we cannot read

    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


async def current_revision(database: Database) -> str | None:
    try:
        value = await database.fetch_val("SELECT version_num FROM alembic_version")
    except asyncpg_errors("UndefinedTableError", also=(sqlite3.OperationalError,)):
        return None
    return str(value) if value is not None else None


def embedded_at_head(settings: Settings) -> bool:
    """Whether the embedded SQLite file is already at the code's head (read with the
    standard library's sqlite3, in a few milliseconds): then nothing needs Alembic."""
    path = Path(settings.embedded_database)
    if settings.database_url is not None or not path.is_file():
        return False
    heads = script_heads(settings.migrations_dir)
    if heads is None or len(heads) != 1:
        return False
    with contextlib.closing(sqlite3.connect(path)) as connection:
        try:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            return False
    return {row[0] for row in rows} == heads


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
    if settings.database_url is None and not embedded_at_head(settings):
        upgrade(settings)
    async with open_database(settings) as database:
        await check_schema(settings, database)

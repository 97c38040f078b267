"""The database: `databases` over asyncpg (PostgreSQL) or aiosqlite (SQLite).

`databases` 0.9.0 is unmaintained; two traps were verified with it: a failed COMMIT leaks
the connection (and `disconnect()` then hangs), and work of child tasks inside a
transaction runs on other connections. So: SQL stays in one small module per domain,
writes are single statements (no `transaction()`), every query is bounded by a statement
timeout, and connect/disconnect are bounded too. Driver errors are translated here into
the protocol's statuses and never reach a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from databases import Database
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import ClauseElement

from realtime.exceptions import ConfigError, Conflict, InvalidData, RequestError, Unavailable
from realtime.settings import Settings

logger = logging.getLogger("realtime.db")
RETRY_AFTER = 2


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlalchemy_url(url: str) -> str:
    """The URL SQLAlchemy (Alembic) wants: asyncpg for PostgreSQL, pysqlite for SQLite."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def ensure_directory(url: str) -> None:
    """SQLite creates its file but not the folder it lives in."""
    if is_sqlite(url):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _options(settings: Settings) -> dict[str, Any]:
    timeout = settings.db_timeout
    if is_sqlite(settings.database):
        return {"timeout": timeout}
    return {
        "min_size": 1,
        "max_size": settings.db_pool_size,
        "timeout": timeout,  # connect
        # the server's statement_timeout cancels first; the client-side one is a backstop
        "command_timeout": timeout + 1,
        "server_settings": {"statement_timeout": str(int(timeout * 1000))},
    }


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    url = settings.database
    ensure_directory(url)
    database = Database(url, **_options(settings))
    try:
        async with asyncio.timeout(settings.db_timeout * 2):
            await database.connect()
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        reason = type(error).__name__
        raise ConfigError(f"DATABASE_URL: cannot connect to the database ({reason})") from None
    try:
        yield database
    finally:
        await _disconnect(database, settings.db_timeout)


async def _disconnect(database: Database, limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            await database.disconnect()
    except TimeoutError:
        logger.warning("database disconnect timed out after %.0f s; abandoning the pool", limit)


async def ping(database: Database, limit: float) -> bool:
    try:
        async with asyncio.timeout(limit):
            await database.fetch_val("SELECT 1")
        return True
    except Exception as error:
        logger.warning("database ping failed: %s", type(error).__name__)
        return False


def translate(error: BaseException) -> RequestError | None:
    """A driver error as the status a client should see, or None if it is not one."""
    if isinstance(error, asyncpg.UniqueViolationError):
        return Conflict("a record with these values already exists")
    if isinstance(error, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        return InvalidData("a value violates a constraint of the record")
    if isinstance(error, asyncpg.QueryCanceledError | TimeoutError):
        return Unavailable(RETRY_AFTER, "the database timed out")
    if isinstance(error, sqlite3.IntegrityError):
        if "UNIQUE" in str(error):
            return Conflict("a record with these values already exists")
        return InvalidData("a value violates a constraint of the record")
    if isinstance(
        error,
        asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | sqlite3.OperationalError
        | ConnectionError
        | OSError
        | TimeoutError,
    ):
        return Unavailable(RETRY_AFTER, "the database is unavailable")
    return None


def contains(text: str) -> str:
    """A LIKE pattern (with escape character backslash) matching `text` literally anywhere."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def utc(value: datetime | None) -> datetime | None:
    """Timestamps come back timezone-aware on both engines (SQLite stores naive UTC)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


class Prepared:
    """A statement built once with named parameters (`sa.bindparam`), compiled once.

    On PostgreSQL it runs as its SQL string straight on the pooled asyncpg connection:
    `databases` would compile it again on every call, a third of the server's time on a
    list (docs/bench-projects.md). Elsewhere (SQLite) it goes through `databases` with the
    values bound, so both engines run the very same statement. Rows are mappings either way.
    """

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._postgres: tuple[str, tuple[str, ...], dict[str, Any]] | None = None

    def _compiled(self) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        if self._postgres is None:
            compiled: Any = self.statement.compile(
                dialect=asyncpg_dialect(),  # type: ignore[no-untyped-call]
                compile_kwargs={"render_postcompile": True},
            )
            # literals in the statement are parameters too, with their values kept here
            literals = dict(compiled.params)
            self._postgres = (compiled.string, tuple(compiled.positiontup or ()), literals)
        return self._postgres

    def _args(self, values: dict[str, Any]) -> tuple[str, list[Any]]:
        sql, names, literals = self._compiled()
        return sql, [values[name] if name in values else literals[name] for name in names]

    def _bound(self, values: dict[str, Any]) -> ClauseElement:
        """The statement with its parameters' values in (for `databases`, off PostgreSQL;
        `.params()` would do for a SELECT but not for an UPDATE)."""

        def bind(element: Any) -> Any:
            if isinstance(element, BindParameter) and element.key in values:
                return sa.bindparam(element.key, values[element.key], type_=element.type)
            return None

        # SQLAlchemy's overloads do not cover a callback over any element
        bound: ClauseElement = visitors.replacement_traverse(  # type: ignore[call-overload]
            self.statement, {}, bind
        )
        return bound

    async def _run(self, db: Database, values: dict[str, Any], method: str) -> Any:
        """`method` of `databases` (fetch_all, fetch_one, fetch_val) off PostgreSQL, the
        matching asyncpg method on it."""
        if db.url.dialect != "postgresql":
            return await getattr(db, method)(self._bound(values))
        sql, args = self._args(values)
        async with db.connection() as connection:
            return await getattr(connection.raw_connection, _ASYNCPG[method])(sql, *args)

    async def fetch_all(self, db: Database, **values: Any) -> list[Any]:
        return list(await self._run(db, values, "fetch_all"))

    async def fetch_one(self, db: Database, **values: Any) -> Any:
        return await self._run(db, values, "fetch_one")

    async def fetch_val(self, db: Database, **values: Any) -> Any:
        return await self._run(db, values, "fetch_val")


_ASYNCPG = {"fetch_all": "fetch", "fetch_one": "fetchrow", "fetch_val": "fetchval"}

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
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from databases import Database
from databases.core import Connection
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.expression import ClauseElement

from realtime.exceptions import (
    ConfigError,
    Conflict,
    InvalidData,
    OutcomeUnknown,
    RequestError,
    Unavailable,
)
from realtime.settings import Settings

logger = logging.getLogger("realtime.db")
RETRY_AFTER = 2
Query = ClauseElement | str


def asyncpg_errors(
    *names: str, also: tuple[type[BaseException], ...] = ()
) -> tuple[type[BaseException], ...]:
    """`also` and asyncpg's exception classes `names`; `also` alone if asyncpg was never
    imported: then no connection of this process is a PostgreSQL one and none of them
    can be raised. The embedded default never imports asyncpg (databases does, for a
    postgresql:// URL), which keeps ~3 MiB out of its process (docs/benchmarks.md)."""
    module = sys.modules.get("asyncpg")
    return also + tuple(getattr(module, name) for name in names) if module is not None else also


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
        # a slow statement is cancelled by the server first (a known outcome: not done);
        # BoundedDatabase's client-side bound, at `timeout`, is for a server that does not
        # answer at all; asyncpg's own command_timeout is a backstop behind both
        "command_timeout": timeout + 1,
        "server_settings": {"statement_timeout": str(max(1, int(timeout * 900)))},
    }


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    url = settings.database
    ensure_directory(url)
    database = BoundedDatabase(url, settings.db_timeout, **_options(settings))
    try:
        async with asyncio.timeout(settings.db_timeout * 2):
            await database.connect()
    except asyncpg_errors("PostgresError", also=(OSError, TimeoutError)) as error:
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


class BoundedDatabase(Database):
    """`databases.Database` with every call bounded by REALTIME_DB_TIMEOUT on PostgreSQL,
    one phase at a time, so that the answer says what is known (docs/protocol.md):

    - getting a connection (pool acquire, connect): a timeout means nothing was sent:
      UNAVAILABLE, not done;
    - the statement: a timeout (or a connection lost meanwhile) after a write was sent
      leaves its outcome unknown: `OutcomeUnknown` (TIMEOUT), never UNAVAILABLE; a read
      changed nothing: UNAVAILABLE;
    - giving the connection back (asyncpg resets it, unbounded by default).

    A connection that timed out is terminated: its state is unknown, and asyncpg's
    release would wait on a server that does not answer. SQLite (a local file) is not
    bounded here: it has its own busy timeout.
    """

    def __init__(self, url: str, limit: float, **options: Any) -> None:
        super().__init__(url, **options)
        self.limit = limit

    async def fetch_all(self, query: Query, values: dict[str, Any] | None = None) -> Any:
        return await self.run(query, lambda c: c.fetch_all(query, values))

    async def fetch_one(self, query: Query, values: dict[str, Any] | None = None) -> Any:
        return await self.run(query, lambda c: c.fetch_one(query, values))

    async def fetch_val(
        self, query: Query, values: dict[str, Any] | None = None, column: Any = 0
    ) -> Any:
        return await self.run(query, lambda c: c.fetch_val(query, values, column))

    async def execute(self, query: Query, values: dict[str, Any] | None = None) -> Any:
        return await self.run(query, lambda c: c.execute(query, values))

    async def run(
        self,
        query: Query,
        call: Callable[[Connection], Awaitable[Any]],
        limit: float | None = None,
    ) -> Any:
        """`call(connection)`, the statement `query`, on a connection, each phase bounded
        by `limit` (REALTIME_DB_TIMEOUT unless given)."""
        if self.url.dialect != "postgresql":
            async with self.connection() as connection:
                return await call(connection)
        limit = limit or self.limit
        connection = await self._acquire(limit)
        try:
            return await self._statement(connection, call(connection), _writes(query), limit)
        finally:
            await self._release(connection, limit)

    async def _acquire(self, limit: float) -> Connection:
        connection = self.connection()
        try:
            async with asyncio.timeout(limit):
                await connection.__aenter__()
        except TimeoutError:
            raise Unavailable(RETRY_AFTER, "the database did not answer in time") from None
        return connection

    async def _statement(
        self, connection: Connection, call: Awaitable[Any], write: bool, limit: float
    ) -> Any:
        try:
            async with asyncio.timeout(limit):
                return await call
        except asyncpg_errors("ConnectionDoesNotExistError", also=(TimeoutError, OSError)) as error:
            connection.raw_connection.terminate()
            if write:
                raise OutcomeUnknown() from None
            if isinstance(error, TimeoutError):
                raise Unavailable(RETRY_AFTER, "the database timed out") from None
            raise

    async def _release(self, connection: Connection, limit: float) -> None:
        try:
            async with asyncio.timeout(limit):
                await connection.__aexit__(None, None, None)
        except TimeoutError:
            # the reset got no answer: drop the connection, and forget it for this task
            # as databases would have (its release never got that far)
            connection.raw_connection.terminate()
            backend: Any = connection._connection  # databases' handle of the raw connection
            backend._connection = None
            self._connection = None


def _writes(query: Query) -> bool:
    """INSERT, UPDATE and DELETE (SQLAlchemy's UpdateBase), or SQL text that is not a
    SELECT: the statements whose outcome a lost answer leaves unknown."""
    if isinstance(query, str):
        return query.lstrip()[:6].upper() != "SELECT"
    return isinstance(query, UpdateBase)


async def ping(database: Database, limit: float) -> bool:
    try:
        if isinstance(database, BoundedDatabase):
            await database.run("SELECT 1", lambda c: c.fetch_val("SELECT 1"), limit)
        else:
            async with asyncio.timeout(limit):
                await database.fetch_val("SELECT 1")
        return True
    except Exception as error:
        logger.warning("database ping failed: %s", type(error).__name__)
        return False


def translate(error: BaseException) -> RequestError | None:
    """A driver error as the error of ours a client should see, or None if it is not
    one. Only the class is chosen here (a duplicate is Conflict, a violated constraint
    InvalidData, an outage Unavailable); its status and HTTP status are the table's
    (realtime.exceptions.WIRE)."""
    if isinstance(error, OutcomeUnknown):
        # for a job's run (realtime.jobs.steps), an unknown outcome is an outage like any other:
        # the run is retried under its lease; a client is answered OutcomeUnknown itself
        return Unavailable(RETRY_AFTER, "the database timed out")
    if isinstance(error, asyncpg_errors("UniqueViolationError")):
        return Conflict("a record with these values already exists")
    if isinstance(error, asyncpg_errors("IntegrityConstraintViolationError", "DataError")):
        return InvalidData("a value violates a constraint of the record")
    if isinstance(error, asyncpg_errors("QueryCanceledError", also=(TimeoutError,))):
        return Unavailable(RETRY_AFTER, "the database timed out")
    if isinstance(error, sqlite3.IntegrityError):
        if "UNIQUE" in str(error):
            return Conflict("a record with these values already exists")
        return InvalidData("a value violates a constraint of the record")
    unavailable = ("PostgresConnectionError", "InterfaceError", "CannotConnectNowError")
    if isinstance(
        error,
        asyncpg_errors(*unavailable, also=(sqlite3.OperationalError, ConnectionError, OSError)),
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
            # PostgreSQL only: the dialect (~3 MiB) is not imported on the embedded default
            from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

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
        name = _ASYNCPG[method]

        def call(connection: Connection) -> Awaitable[Any]:
            return getattr(connection.raw_connection, name)(sql, *args)  # type: ignore[no-any-return]

        if isinstance(db, BoundedDatabase):
            return await db.run(self.statement, call)
        async with db.connection() as connection:
            return await call(connection)

    async def fetch_all(self, db: Database, **values: Any) -> list[Any]:
        return list(await self._run(db, values, "fetch_all"))

    async def fetch_one(self, db: Database, **values: Any) -> Any:
        return await self._run(db, values, "fetch_one")

    async def fetch_val(self, db: Database, **values: Any) -> Any:
        return await self._run(db, values, "fetch_val")


_ASYNCPG = {"fetch_all": "fetch", "fetch_one": "fetchrow", "fetch_val": "fetchval"}

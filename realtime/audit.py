"""The audit log: who called which audited package, how, when, and how it ended.

A handler author marks a package `Package(..., audited=True)`; the router
(`realtime.dispatch`) then hands every answered call of it to the node's `AuditLog`
(held by the lifespan, `Services.audit`), after the handler returned, so after its
single-statement write committed. Recording is a tuple appended to a bounded list, no
await: the request never waits on the audit log. A task of the lifespan writes the rows
in batches (every REALTIME_AUDIT_FLUSH seconds, or at once when REALTIME_AUDIT_BATCH rows
are waiting), and writes whatever is left when the app shuts down, before the database
closes: a graceful shutdown loses nothing.

What is never allowed to happen: a request blocked or failed because of its audit row.
So, decided here:

- the queue is full (REALTIME_AUDIT_QUEUE rows waiting: the database is slow or down):
  the new row is dropped, counted (`realtime_audit_rows_total{result="dropped"}`) and
  logged (at most once a minute);
- a write fails (database down, timed out): the batch goes back to the head of the queue
  (in order, as far as the queue has room: the rest is dropped and counted), the failure
  is counted (`realtime_audit_write_failures_total`) and logged, and the next attempt
  waits longer (doubling up to AUDIT_BACKOFF_MAX). A write whose outcome is unknown (sent,
  unanswered) is retried too: such a batch may be stored twice, never silently lost;
- a batch the table refuses (a constraint, a value: not an outage) is written row by row,
  and a row refused alone is dropped, counted and logged, so that it cannot hold the
  others back (strings are cleaned of NUL and cut to the column sizes first, see AuditRow);
- at shutdown the remaining rows get one more attempt, bounded by REALTIME_DB_TIMEOUT
  per batch; rows still unwritten are counted `lost` and logged with their number. A row
  recorded after that (a request that outlived the shutdown) is counted `dropped`.

The framework does not know the application's tables (docs/architecture.md): the rows go
through an `AuditStore`, declared by a handler module as `AUDIT` (handlers/audit.py, its
SQL in handlers/audit_sql.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from realtime.db import translate
from realtime.exceptions import Conflict, InvalidData, RealtimeError

if TYPE_CHECKING:
    from databases import Database

    from realtime.metrics import Metrics
    from realtime.packages import Context
    from realtime.settings import Settings

logger = logging.getLogger("realtime.audit")

TARGET_MAX = 64  # characters of a target id kept (a bad request's id may be anything)
TEXT_MAX = 255  # tenant, sub and node (a token's claims may be longer: cut)
PACKAGE_MAX = 100
OUTCOME_MAX = 32
TARGET_KEYS = ("id", "job_id", "sub")  # sub: whom sessions.disconnect closed
AUDIT_BACKOFF_MAX = 5.0  # seconds between attempts while the database is down
DROP_LOG_EVERY = 60.0  # seconds between two "dropped" warnings


class AuditRow(NamedTuple):
    """One audited call, as the store writes it (`node` is this process). Its strings
    hold no NUL and at most TEXT_MAX characters (`package` PACKAGE_MAX, `target` and
    `req_id` TARGET_MAX, `outcome` OUTCOME_MAX): a table with these sizes takes every row.
    """

    at: datetime
    tenant_id: str
    sub: str
    package: str
    target: str | None
    transport: str  # "ws" or "rest"
    req_id: str | None
    node: str
    outcome: str  # "OK" or the failure's status name (NOT_FOUND, CONFLICT, ...)


class AuditStore(Protocol):
    """Where the rows go: the application's table (a module of plain functions does)."""

    async def write(self, db: Database, rows: Sequence[AuditRow]) -> None:
        """Store `rows` in one statement (all or none)."""


# what the router records on the request path: (time.time(), tenant, sub, package,
# target, transport, req_id, outcome); the AuditRow is made off it, in the flusher
_Pending = tuple[float, str, str, str, str | None, str, str | None, str]


def target_of(answer: Any, data: Any) -> str | None:
    """The id the call was about: the answer's `id`/`job_id`/`sub`, else the request's."""
    for source in (answer, data):
        if isinstance(source, dict):
            for key in TARGET_KEYS:
                value = source.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    return str(value)[:TARGET_MAX]
    return None


def _text(value: str, limit: int) -> str:
    # PostgreSQL stores no NUL in text, and a varchar refuses what is longer
    return value.replace("\x00", "\ufffd")[:limit]


def _refused(error: Exception) -> bool:
    """The table refused the rows (a constraint, a value): writing them again cannot help."""
    return isinstance(translate(error), InvalidData | Conflict)


def node_name() -> str:
    """This process, as the JSON log lines name it (realtime.logs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class AuditLog:
    """The node's queue of audit rows and the task that writes them (`open_audit`)."""

    def __init__(
        self,
        store: AuditStore | None,
        database: Database,
        *,
        capacity: int,
        batch: int,
        interval: float,
        timeout: float,
        metrics: AuditMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._db = database
        self._capacity = max(1, capacity)
        self._batch = max(1, batch)
        self._interval = interval
        self._timeout = timeout
        self.node = node_name()
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self.written = self.dropped = self.lost = self.failures = 0
        self._drop_logged = -DROP_LOG_EVERY

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # -- on the request path: no await, no I/O -------------------------------------------

    def record(self, ctx: Context, transport: str, outcome: str, answer: Any, data: Any) -> None:
        principal = ctx.principal
        row = (
            time.time(),
            principal.tenant_id,
            principal.sub,
            ctx.package.name,
            target_of(answer, data),
            transport,
            ctx.req_id,
            outcome,
        )
        pending = self._pending
        if len(pending) >= self._capacity:
            self._drop(1)
            return
        pending.append(row)
        if len(pending) >= self._batch:
            self._wake.set()

    def _drop(self, count: int) -> None:
        self._count("dropped", count)
        if self._metrics is not None:
            self._metrics.waiting.set(len(self._pending))
        now = time.monotonic()
        if now - self._drop_logged >= DROP_LOG_EVERY:
            self._drop_logged = now
            logger.warning(
                "audit log queue full (%d rows waiting for the database): %d row(s) dropped "
                '(realtime_audit_rows_total{result="dropped"} counts them all)',
                len(self._pending),
                count,
            )

    # -- the flusher -----------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until `stop`: every interval, or as soon as a batch is full;
        slower while writes fail."""
        delay = self._interval
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            failed = False
            while self._pending and not self._stopping:
                if not await self.flush_once():
                    failed = True
                    break
            delay = min(delay * 2, AUDIT_BACKOFF_MAX) if failed else self._interval
            if self._metrics is not None:
                self._metrics.waiting.set(len(self._pending))

    def _count(self, result: str, rows: int) -> None:
        setattr(self, result, getattr(self, result) + rows)
        if self._metrics is not None:
            self._metrics.rows.labels(result).inc(rows)

    def stop(self) -> None:
        """End `run` after the write it is doing, if any (`close` writes the rest)."""
        self._stopping = True
        self._wake.set()

    async def flush_once(self) -> bool:
        """Write the oldest batch; False if the write failed (the batch is queued again)."""
        taken = self._pending[: self._batch]
        del self._pending[: len(taken)]
        if not taken:
            return True
        try:
            await self._write(taken)
        except asyncio.CancelledError:
            self._pending[:0] = taken  # outcome unknown: written again by `close`
            raise
        except Exception as error:  # any failure (TimeoutError included): keep the rows
            if _refused(error):
                return await self._one_by_one(taken)
            self._requeue(taken, error)
            return False
        self._count("written", len(taken))
        return True

    async def _one_by_one(self, taken: list[_Pending]) -> bool:
        """A batch the table refused (not an outage): each row alone, so that one bad row
        cannot hold back the others for ever; the refused ones are dropped and logged."""
        for index, row in enumerate(taken):
            try:
                await self._write([row])
            except Exception as error:
                if not _refused(error):
                    self._requeue(taken[index:], error)
                    return False
                reason = type(error).__name__  # not its text: it may quote the row's values
                logger.error("audit log: a row of %s was refused (%s): dropped", row[3], reason)
                self._count("dropped", 1)
                continue
            self._count("written", 1)
        return True

    async def _write(self, pending: list[_Pending]) -> None:
        if self._store is None:
            raise RealtimeError("no AuditStore is declared (a handler module's AUDIT)")
        rows = [self._row(p) for p in pending]
        async with asyncio.timeout(self._timeout):
            await self._store.write(self._db, rows)

    def _row(self, p: _Pending) -> AuditRow:
        at, tenant, sub, package, target, transport, req_id, outcome = p
        return AuditRow(
            datetime.fromtimestamp(at, UTC),
            _text(tenant, TEXT_MAX),
            _text(sub, TEXT_MAX),
            _text(package, PACKAGE_MAX),
            None if target is None else _text(target, TARGET_MAX),
            transport,
            None if req_id is None else _text(req_id, TARGET_MAX),
            _text(self.node, TEXT_MAX),
            _text(outcome, OUTCOME_MAX),
        )

    def _requeue(self, taken: list[_Pending], error: BaseException) -> None:
        self.failures += 1
        if self._metrics is not None:
            self._metrics.failures.inc()
        room = max(0, self._capacity - len(self._pending))
        kept = taken[:room]
        self._pending[:0] = kept
        if len(kept) < len(taken):
            self._drop(len(taken) - len(kept))
        logger.warning(
            "audit log: writing %d row(s) failed (%s); kept for the next attempt",
            len(taken),
            type(error).__name__,
        )

    async def close(self) -> None:
        """Write everything still queued (each batch bounded by the database timeout);
        what cannot be written is counted `lost` and logged."""
        while self._pending:
            if not await self.flush_once():
                break
        if self._pending:
            self._count("lost", len(self._pending))
            logger.error(
                "audit log: %d row(s) could not be written at shutdown and are lost",
                len(self._pending),
            )
            self._pending.clear()
        self._capacity = 0  # closed: a late row is dropped and counted, not left behind


class AuditMetrics:
    """The audit log's series, on the app's registry: real prometheus-client objects, so
    that `realtime serve --workers N` sums them over its processes like the others. They
    move per batch, per dropped row and per flusher turn, never per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.rows = Counter(
            "realtime_audit_rows",
            "Audit rows by fate: written, dropped (queue full or refused), lost (at shutdown)",
            ["result"],
            registry=registry,
        )
        self.failures = Counter(
            "realtime_audit_write_failures",
            "Audit batch writes that failed (their rows were queued again)",
            registry=registry,
        )
        self.waiting = Gauge(
            "realtime_audit_queue_rows",
            "Audit rows waiting to be written (as of the flusher's last turn or drop)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        for result in ("written", "dropped", "lost"):
            self.rows.labels(result)  # exposed at 0 before the first row

    def close(self) -> None:
        for series in (self.rows, self.failures, self.waiting):
            self._registry.unregister(series)


@contextlib.asynccontextmanager
async def open_audit(
    settings: Settings, database: Database, store: AuditStore | None, metrics: Metrics
) -> AsyncIterator[AuditLog]:
    """The node's audit log and its flusher, for the app's lifetime; at the end, what is
    queued is written before the database closes."""
    series = AuditMetrics(metrics.registry)
    log = AuditLog(
        store,
        database,
        capacity=settings.audit_queue,
        batch=settings.audit_batch,
        interval=settings.audit_flush,
        timeout=settings.db_timeout,
        metrics=series,
    )
    flusher = asyncio.create_task(log.run()) if store is not None else None
    try:
        yield log
    finally:
        if flusher is not None:
            log.stop()
            try:
                await flusher
            except Exception:
                logger.exception("audit log: the flusher failed")
        await log.close()
        series.close()

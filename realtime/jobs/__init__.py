"""Background jobs on taskiq: the broker chosen from settings, tasks registered by name.

On the embedded default the broker is taskiq's InMemoryBroker: tasks run inside the
server, on its event loop, with the same protocol. With REDIS_URL the server only queues
jobs on a Redis stream (`realtime.jobs.broker`) and `realtime worker` processes run them;
`realtime scheduler` queues the periodic ones. Tasks receive `TaskServices` through
taskiq's state (`TaskiqDepends()` on a `TaskiqState` parameter).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from databases import Database
from taskiq import AsyncBroker, InMemoryBroker, SimpleRetryMiddleware, TaskiqDepends, TaskiqState
from taskiq.decor import AsyncTaskiqDecoratedTask
from taskiq.exceptions import SendTaskError

from realtime.bus import MEMORY_SCHEME, REDIS_SCHEMES, scheme
from realtime.bus.hub import Hub
from realtime.exceptions import ConfigError, Unavailable
from realtime.settings import Settings

if TYPE_CHECKING:
    from realtime.metrics import Metrics

logger = logging.getLogger("realtime.jobs")
HEARTBEAT_TOPIC = "system.heartbeat"
T = TypeVar("T")
QUEUE_RETRY_AFTER = 2  # seconds, when the job queue (Redis) cannot be reached
QUEUE_SCHEMES = (MEMORY_SCHEME, *REDIS_SCHEMES)  # what broker_from_url serves


@dataclass(frozen=True)
class Task:
    """A background task a handler module declares (in its TASKS list). `every` (seconds)
    makes it periodic: `realtime scheduler` queues it that often. `recover`, with REDIS_URL,
    is run by every worker every `REALTIME_JOB_SWEEP_INTERVAL` seconds: the queue forgets
    (Redis restarted empty) what the application's own records remember, so the task's
    owner puts back what it finds missing (`Jobs.queued`, `Jobs.kick`)."""

    name: str
    func: Callable[..., Awaitable[Any]]
    labels: dict[str, Any] = field(default_factory=dict)
    every: int | None = None
    recover: Callable[[TaskServices, Jobs], Awaitable[None]] | None = None


@dataclass(frozen=True)
class TaskServices:
    """What a running task may use. `redelivered` is true where an interrupted run is
    queued again (a Redis worker): a task must then leave its job resumable when it is
    cancelled, instead of recording a failure."""

    settings: Settings
    database: Database
    hub: Hub
    redelivered: bool
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # the bodies of the jobs running in this process (`stoppable`): what a stop cancels
    bodies: set[asyncio.Task[Any]] = field(default_factory=set, compare=False)
    # this process's metrics (how jobs end); None: not counted
    metrics: Metrics | None = field(default=None, compare=False)


async def stoppable(services: TaskServices, body: Coroutine[Any, Any, T]) -> T | None:
    """Run a task's body as its own asyncio task, the one `stop_bodies` cancels: the body
    sees the CancelledError and records how it ended, then the task returns None. taskiq's
    runner, which logs any cancellation of the task it runs as an exception found, with a
    traceback, so sees a job that ended. A cancellation of the task itself still reaches
    the body (through the await) and propagates."""
    inner = asyncio.ensure_future(body)
    services.bodies.add(inner)
    inner.add_done_callback(services.bodies.discard)
    try:
        return await inner
    except asyncio.CancelledError:
        outer = asyncio.current_task()
        if inner.cancelled() and outer is not None and not outer.cancelling():
            return None  # stopped on purpose: the body recorded its end
        raise


def stop_bodies(services: TaskServices) -> None:
    """Stop every job body of this process at the depth that handles it (`stoppable`)."""
    for body in list(services.bodies):
        body.cancel()


class Jobs:
    """The broker and the app's tasks; `kick` queues one by name."""

    def __init__(self, broker: AsyncBroker, tasks: Sequence[Task]) -> None:
        self.broker = broker
        self._tasks: dict[str, AsyncTaskiqDecoratedTask[Any, Any]] = {}
        for task in tasks:
            if task.name in self._tasks:
                raise ConfigError(f"task {task.name!r} is declared twice")
            labels = dict(task.labels)
            if task.every:
                labels["schedule"] = [{"interval": task.every}]
            self._tasks[task.name] = broker.register_task(task.func, task_name=task.name, **labels)

    async def kick(self, name: str, **kwargs: Any) -> None:
        """Queue task `name`; Unavailable if the queue cannot be reached (it may have got
        the message when the connection was lost after sending: see realtime.jobs.steps)."""
        try:
            await self._tasks[name].kiq(**kwargs)
        except SendTaskError as error:  # taskiq wraps whatever the broker raised
            from redis.exceptions import RedisError  # only a Redis queue raises it

            if not isinstance(error.__cause__, RedisError | OSError):
                raise
            raise Unavailable(QUEUE_RETRY_AFTER, "the job queue is unavailable") from error

    async def queued(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments of every message of task `name` the queue holds, waiting
        or being run; [] on the in-process broker, which holds nothing."""
        from realtime.jobs.broker import JobStreamBroker

        if not isinstance(self.broker, JobStreamBroker):
            return []
        return [m.kwargs for m in await self.broker.queued() if m.task_name == name]


def broker_from_url(url: str, settings: Settings) -> AsyncBroker:
    """The job queue `url` names (the same URL as the bus: `Settings.bus_url`):
    memory:// runs jobs inside this process; a Redis URL queues them on a stream that
    `realtime worker` processes drain. taskiq-redis is imported for Redis URLs only."""
    if scheme(url, "the job queue", QUEUE_SCHEMES) == MEMORY_SCHEME:
        return InMemoryBroker(max_async_tasks=settings.max_jobs)
    from taskiq_redis import RedisAsyncResultBackend

    from realtime.jobs.broker import JobStreamBroker

    broker = JobStreamBroker(
        url,
        queue=settings.job_queue,
        group=f"{settings.job_queue}:workers",
        claim_timeout=settings.job_claim_timeout,
        reclaim_interval=settings.job_reclaim_interval,
    )
    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, result_ex_time=settings.job_result_ttl
    )
    # retries only for tasks labelled retry_on_error (idempotent ones, like heartbeat)
    middleware = SimpleRetryMiddleware(default_retry_count=3, default_retry_label=False)
    return broker.with_result_backend(backend).with_middlewares(middleware)


async def heartbeat(
    state: TaskiqState = TaskiqDepends(),  # noqa: B008 - taskiq's dependency marker
) -> str:
    """The periodic liveness task: announces itself on `system.heartbeat`."""
    services: TaskServices = state.services
    at = datetime.now(UTC).isoformat()
    await services.hub.publish(HEARTBEAT_TOPIC, {"at": at, "worker": services.worker})
    logger.info("heartbeat at %s", at)
    return at


def builtin_tasks(settings: Settings) -> list[Task]:
    every = settings.heartbeat_seconds or None  # 0 turns the heartbeat off
    return [Task("heartbeat", heartbeat, {"retry_on_error": True, "max_retries": 2}, every)]

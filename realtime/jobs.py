"""Background jobs on taskiq: the broker chosen from settings, tasks registered by name.

On the embedded default the broker is taskiq's InMemoryBroker: tasks run inside the
server, on its event loop, with the same protocol. Tasks receive the app's services
through taskiq's state (`TaskiqDepends()` on a `TaskiqState` parameter).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskiq import AsyncBroker, InMemoryBroker
from taskiq.decor import AsyncTaskiqDecoratedTask

from realtime.exceptions import ConfigError
from realtime.settings import Settings


@dataclass(frozen=True)
class Task:
    """A background task a handler module declares (in its TASKS list)."""

    name: str
    func: Callable[..., Awaitable[Any]]
    labels: dict[str, Any] = field(default_factory=dict)


class Jobs:
    """The broker and the app's tasks; `kick` queues one by name."""

    def __init__(self, broker: AsyncBroker, tasks: Sequence[Task]) -> None:
        self.broker = broker
        self._tasks: dict[str, AsyncTaskiqDecoratedTask[Any, Any]] = {}
        for task in tasks:
            if task.name in self._tasks:
                raise ConfigError(f"task {task.name!r} is declared twice")
            self._tasks[task.name] = broker.register_task(
                task.func, task_name=task.name, **task.labels
            )

    async def kick(self, name: str, **kwargs: Any) -> None:
        await self._tasks[name].kiq(**kwargs)


def build_broker(settings: Settings) -> AsyncBroker:
    # REDIS_URL brings the stream broker and `realtime worker` in a later slice; until
    # then jobs run in process on every configuration
    return InMemoryBroker(max_async_tasks=settings.max_jobs)

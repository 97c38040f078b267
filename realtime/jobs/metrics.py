"""Job metrics: a taskiq middleware on either broker, and the queue's depth.

`JobMetrics` counts in whichever process it runs: queued where a job is kicked (the
server), started and finished where it runs (a `realtime worker`, or the server on the
embedded default). `sample_queue` reads the Redis stream's length and pending count every
few seconds; a scrape never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from taskiq import AsyncBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult

from realtime.metrics import Metrics

logger = logging.getLogger("realtime.jobs")
SAMPLE_EVERY = 5.0  # seconds between two readings of the queue's depth


class JobMetrics(TaskiqMiddleware):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def post_send(self, message: TaskiqMessage) -> None:
        self._metrics.jobs_queued.labels(message.task_name).inc()

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        self._metrics.jobs_started.labels(message.task_name).inc()
        return message

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        outcome = "error" if result.is_err else "ok"
        self._metrics.jobs_finished.labels(message.task_name, outcome).inc()
        self._metrics.job_seconds.labels(message.task_name).observe(result.execution_time)


def measure(broker: AsyncBroker, metrics: Metrics) -> None:
    """Count `broker`'s jobs into `metrics`: one JobMetrics per broker (a broker an app
    was given may outlive it: the newest app's metrics count)."""
    for middleware in broker.middlewares:
        if isinstance(middleware, JobMetrics):
            middleware._metrics = metrics
            return
    broker.add_middlewares(JobMetrics(metrics))


async def sample_queue(broker: Any, metrics: Metrics, every: float = SAMPLE_EVERY) -> None:
    """Keep the queue gauges current (a Redis broker only: `depth()`), until cancelled."""
    if not hasattr(broker, "depth"):
        return  # the in-process broker: no queue to measure
    from redis.exceptions import RedisError  # a Redis broker only (the embedded default: none)

    reclaimed = 0
    me = asyncio.current_task()
    assert me is not None
    while True:
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            async with asyncio.timeout(every):
                length, pending = await broker.depth()
            metrics.job_queue_length.set(length)
            metrics.job_queue_pending.set(pending)
        if me.cancelling():
            # a cancel that arrived inside the Redis call can come out of it as one of
            # the errors above (seen: the worker's stop then waited on this loop forever)
            raise asyncio.CancelledError()
        now = getattr(broker, "reclaimed", 0)
        if now > reclaimed:
            metrics.job_reclaims.inc(now - reclaimed)
            reclaimed = now
        await asyncio.sleep(every)

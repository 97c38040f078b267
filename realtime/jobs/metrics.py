"""Job metrics: a taskiq middleware on either broker, and the queue's depth.

`JobMetrics` counts in whichever process it runs: queued where a job is kicked (the
server), started and finished where it runs (a `realtime worker`, or the server on the
embedded default). `sample_queue` reads the Redis stream's length and pending count every
few seconds; a scrape never waits on Redis.
"""

from __future__ import annotations

import asyncio
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


def _quietly(probe: asyncio.Future[Any]) -> None:
    if not probe.cancelled():
        probe.exception()  # retrieved, so that asyncio does not log it


async def sample_queue(broker: Any, metrics: Metrics, every: float = SAMPLE_EVERY) -> None:
    """Keep the queue gauges current (a Redis broker only: `depth()`), until cancelled."""
    if not hasattr(broker, "depth"):
        return  # the in-process broker: no queue to measure
    from redis.exceptions import RedisError  # a Redis broker only (the embedded default: none)

    reclaimed = 0
    while True:
        # the Redis call runs in a task of its own that this loop never cancels: a cancel
        # delivered inside redis-py could be swallowed there, and this loop, cancelled at
        # the worker's stop, then ran on forever; waiting on the probe is cancel-safe
        probe = asyncio.ensure_future(broker.depth())
        try:
            done, _ = await asyncio.wait({probe}, timeout=every)
        except asyncio.CancelledError:
            probe.add_done_callback(_quietly)
            raise
        if probe in done and not probe.cancelled():
            error = probe.exception()
            if error is None:
                length, pending = probe.result()
                metrics.job_queue_length.set(length)
                metrics.job_queue_pending.set(pending)
            elif not isinstance(error, RedisError | OSError):
                raise error
        else:
            probe.add_done_callback(_quietly)  # late: its outcome is not needed
        now = getattr(broker, "reclaimed", 0)
        if now > reclaimed:
            metrics.job_reclaims.inc(now - reclaimed)
            reclaimed = now
        await asyncio.sleep(every)

"""`realtime worker` and `realtime scheduler`: thin layers over taskiq's Receiver and
SchedulerLoop, with the server's settings, database and bus.

A worker stops on SIGTERM or SIGINT: it takes no new job, gives the running ones
`REALTIME_WORKER_GRACE` seconds, then cancels the rest *without* acknowledging them and
hands them back, so another worker resumes them at once (no job is lost to a deploy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.exceptions import RedisError
from taskiq import TaskiqScheduler
from taskiq.cli.scheduler.run import SchedulerLoop
from taskiq.receiver import Receiver
from taskiq.schedule_sources import LabelScheduleSource

from realtime.bus import in_process
from realtime.db import open_database
from realtime.exceptions import ConfigError, Unavailable
from realtime.jobs import Jobs, Task, TaskServices, broker_from_url, builtin_tasks
from realtime.jobs.broker import JobStreamBroker, delivery
from realtime.jobs.metrics import measure, sample_queue
from realtime.lifespan import open_hub
from realtime.metrics import Metrics
from realtime.migrate import check_schema
from realtime.settings import Settings

logger = logging.getLogger("realtime.jobs.worker")


class _Receiver(Receiver):
    """taskiq's Receiver, keeping hold of the running callbacks so that a stop past the
    grace period can cancel them (taskiq's own runner leaves them running)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running: set[asyncio.Task[Any]] = set()

    async def callback(self, *args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        try:
            with delivery():
                return await super().callback(*args, **kwargs)
        finally:
            self.running.discard(task)


def _shared_broker(settings: Settings, command: str) -> JobStreamBroker:
    """The job queue the servers share; a queue in process memory has nothing to drain."""
    if in_process(settings.bus_url):
        raise ConfigError(
            f"realtime {command} needs REDIS_URL: on the embedded default, jobs run inside "
            "the server and need no worker"
        )
    broker = broker_from_url(settings.bus_url, settings)
    assert isinstance(broker, JobStreamBroker)  # every shared URL is a Redis one
    return broker


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@contextlib.asynccontextmanager
async def _task_services(settings: Settings, metrics: Metrics) -> AsyncIterator[TaskServices]:
    async with open_database(settings) as database, open_hub(settings, None, metrics) as hub:
        await check_schema(settings, database)
        yield TaskServices(settings, database, hub, redelivered=True, metrics=metrics)


async def run_worker(settings: Settings, tasks: Sequence[Task], concurrency: int) -> int:
    """Run jobs until SIGTERM/SIGINT (0), or until the listener fails for good (1)."""
    broker = _shared_broker(settings, "worker")
    broker.is_worker_process = True
    jobs = Jobs(broker, [*builtin_tasks(settings), *tasks])
    metrics = Metrics(multiprocess=False)
    measure(broker, metrics)
    async with _task_services(settings, metrics) as services, _serving_metrics(settings, metrics):
        broker.state.services = services
        await broker.startup()
        sweeping = asyncio.create_task(_recover(services, jobs, tasks))
        # the queue's depth only where someone can scrape it
        sampled = sample_queue(broker, metrics) if settings.worker_metrics_port else _idle()
        sampling = asyncio.create_task(sampled)
        receiver = _Receiver(
            broker, max_async_tasks=concurrency, run_startup=False, propagate_exceptions=False
        )
        stop = _stop_event()
        listening = asyncio.create_task(receiver.listen(stop))
        print(f"realtime: worker {services.worker} ready, {concurrency} jobs at once", flush=True)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, listening}, return_when=asyncio.FIRST_COMPLETED)
        failed = listening.done() and not listening.cancelled() and listening.exception()
        if failed:
            # a worker that takes no jobs must not look healthy: stop, hand back, exit 1
            logger.error("the worker stopped taking jobs", exc_info=failed)
        stop.set()
        stopping.cancel()
        sweeping.cancel()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeping
        await asyncio.wait({sampling}, timeout=settings.redis_timeout)  # bounded, whatever
        await _stop_worker(broker, receiver, listening, settings.worker_grace)
    return 1 if failed else 0


async def _idle() -> None:
    """No metrics port: nothing to sample."""


@contextlib.asynccontextmanager
async def _serving_metrics(settings: Settings, metrics: Metrics) -> AsyncIterator[None]:
    """The worker's own /metrics (REALTIME_WORKER_METRICS_PORT): its jobs and the queue,
    served by prometheus-client's small HTTP server on a thread of its own."""
    if not settings.worker_metrics_port:
        yield
        return
    from prometheus_client import start_http_server

    server, thread = start_http_server(
        settings.worker_metrics_port, addr=settings.host, registry=metrics.registry
    )
    logger.info("worker metrics on http://%s:%s/metrics", settings.host, server.server_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def _recover(services: TaskServices, jobs: Jobs, tasks: Sequence[Task]) -> None:
    """Run each task's `recover` hook at once, then every sweep interval: what the queue
    lost (Redis restarted empty) the database still knows."""
    hooks = [task.recover for task in tasks if task.recover is not None]
    while hooks:
        for hook in hooks:
            try:
                await hook(services, jobs)
            except (RedisError, OSError, Unavailable) as error:
                logger.warning("could not look for lost jobs (%s)", type(error).__name__)
            except Exception:  # a bug in one hook must not stop the worker taking jobs
                logger.exception("looking for lost jobs failed")
        await asyncio.sleep(services.settings.job_sweep_interval)


async def _stop_worker(
    broker: JobStreamBroker, receiver: _Receiver, listening: asyncio.Task[None], grace: float
) -> None:
    """Finish what fits in the grace period; hand the rest back unacknowledged."""
    await asyncio.wait({listening}, timeout=grace)  # taskiq waits for the running jobs
    listening.cancel()
    broker.hold_acks()  # from here on, taskiq's acks of cancelled jobs are ignored
    unfinished = list(receiver.running)
    for task in unfinished:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):  # a job ignoring cancellation cannot hold the stop
            await asyncio.gather(*unfinished, listening, return_exceptions=True)
    if unfinished:
        logger.warning("handing %d unfinished jobs back to the queue", len(unfinished))
    try:
        async with asyncio.timeout(5):
            await broker.release()
    except (TimeoutError, RedisError, OSError) as error:
        # not handed back: they are reclaimed after the claim timeout instead
        logger.warning("could not hand jobs back (%s)", type(error).__name__)
    await broker.shutdown()
    print("realtime: worker stopped", flush=True)


async def run_scheduler(settings: Settings, tasks: Sequence[Task]) -> None:
    """Queue each periodic task (`every`) on time. Run exactly one scheduler: two would
    queue every period twice."""
    broker = _shared_broker(settings, "scheduler")
    jobs = Jobs(broker, [*builtin_tasks(settings), *tasks])
    source = LabelScheduleSource(jobs.broker)
    scheduler = TaskiqScheduler(jobs.broker, [source])
    broker.is_scheduler_process = True
    await source.startup()  # reads the `schedule` labels of the registered tasks
    await scheduler.startup()
    stop = _stop_event()
    loop = asyncio.create_task(SchedulerLoop(scheduler).run(send_timeout=10))
    print("realtime: scheduler running", flush=True)
    await asyncio.wait([loop, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop
    await scheduler.shutdown()
    await source.shutdown()
    print("realtime: scheduler stopped", flush=True)

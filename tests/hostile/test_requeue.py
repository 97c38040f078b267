"""Issue 11, item 13: a job queued but not yet taken, whose Redis queue entry vanished
(Redis restarted empty), stayed PENDING forever. The database record is the truth: a
worker queues it again (each time an attempt), and a job lost too often ends in FAILURE.

Real processes on PostgreSQL and the test Redis: the entry is lost by FLUSHDB of the test
database while the job is pending and no worker runs; then a worker starts."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import flush_redis, redis_url
from tests.helpers import ws_call
from tests.proxy import running_proxy
from tests.test_workers import Jobs, done_of, redis_env, socket, start, steps_of, watch_until_done

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SWEEP = {"REALTIME_JOB_SWEEP_INTERVAL": "0.5"}
START, LIST, UNAVAILABLE = 20, 24, 9


@pytest.fixture
def idle_node(tmp_path: Path, pg_url: str) -> Iterator[Jobs]:
    """A server on Redis + PostgreSQL and no worker yet: jobs wait in the queue."""
    flush_redis()
    jobs = Jobs(tmp_path, {**redis_env(tmp_path, pg_url), **SWEEP}, [])
    with jobs.stack:
        jobs.add_node("node-a")
        yield jobs


async def test_a_pending_job_whose_queue_entry_vanished_is_queued_again_and_done_once(
    idle_node: Jobs,
) -> None:
    async with socket(idle_node) as ws:
        lost = await start(ws, 3, 0.01)
    assert idle_node.queue_length() == 1
    flush_redis()  # Redis restarted empty: the queue forgot the job, the database did not
    assert idle_node.queue_length() == 0
    assert (await idle_node.job_row(lost))["state"] == "PENDING"

    worker = idle_node.add_worker("worker-1")
    async with socket(idle_node) as ws:
        events = await watch_until_done(ws, lost)
        # control: a job queued normally while the worker runs is run once, not twice
        fresh = await start(ws, 2, 0.01)
        fresh_events = await watch_until_done(ws, fresh)
    assert steps_of(events) == [1, 2, 3]
    assert done_of(events) == [{"job_id": lost, "state": "SUCCESS", "result": {"steps": 3}}]
    row = await idle_node.job_row(lost)
    assert (row["state"], row["attempts"]) == ("SUCCESS", 2)  # queued again: one attempt
    assert f"job {lost} was PENDING with no queue entry: queued again" in worker.output()
    assert done_of(fresh_events) == [{"job_id": fresh, "state": "SUCCESS", "result": {"steps": 2}}]
    assert (await idle_node.job_row(fresh))["attempts"] == 1
    assert f"job {fresh} was PENDING" not in worker.output()
    assert idle_node.queue_length() == 0  # every entry acknowledged and deleted


async def test_a_job_lost_more_often_than_its_attempts_allow_fails_once(idle_node: Jobs) -> None:
    async with socket(idle_node) as ws:
        lost = await start(ws, 3, 0.01)
    flush_redis()
    # one attempt in all: the run itself; none is left for queueing it again
    idle_node.add_worker("worker-1", REALTIME_JOB_MAX_ATTEMPTS="1")
    async with socket(idle_node) as ws:
        events = await watch_until_done(ws, lost)
    expected = {
        "job_id": lost,
        "state": "FAILURE",
        "error": "the job was lost from the queue too often",
    }
    assert steps_of(events) == [] and done_of(events) == [expected]
    row = await idle_node.job_row(lost)
    assert (row["state"], row["error"], row["attempts"]) == ("FAILURE", expected["error"], 0)


async def test_a_start_answered_unavailable_is_never_queued_later(
    tmp_path: Path, pg_url: str
) -> None:
    """UNAVAILABLE means not done: a jobs.start whose queue could not be reached ends its
    record at once, so that no sweep queues it behind the client's back."""
    flush_redis()
    with running_proxy(redis_url()) as proxy:
        env = {**redis_env(tmp_path, pg_url), **SWEEP, "REDIS_URL": proxy.url(redis_url())}
        jobs = Jobs(tmp_path, env, [])
        with jobs.stack:
            jobs.add_node("node-a")
            async with socket(jobs, f"u{secrets.token_hex(4)}") as ws:  # lists only this
                proxy.cut()
                refused = await ws_call(ws, START, {"total_steps": 2, "step_seconds": 0.01})
                proxy.restore()
                listed = await ws_call(ws, LIST, {}, "list")
    assert refused["status_code"] == UNAVAILABLE, refused
    assert refused["error"]["message"] == "the job queue is unavailable"
    [record] = listed["data"]
    assert (record["state"], record["error"]) == ("FAILURE", "the job could not be queued")
    # control: with the queue back, a job starts and a worker (sweeping) runs it alone
    idle = Jobs(tmp_path, {**redis_env(tmp_path, pg_url), **SWEEP}, [])
    with idle.stack:
        idle.add_node("node-b")
        worker = idle.add_worker("worker-1")
        async with socket(idle) as ws:
            job_id = await start(ws, 2, 0.01)
            events = await watch_until_done(ws, job_id)
    assert done_of(events) == [{"job_id": job_id, "state": "SUCCESS", "result": {"steps": 2}}]
    assert "queued again" not in worker.output()
    assert (await idle.job_row(record["job_id"]))["state"] == "FAILURE"

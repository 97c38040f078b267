"""Jobs end to end on real processes: the same test bodies on the embedded default (jobs
run inside the server) and on Redis + PostgreSQL with real `realtime worker` processes;
then what only workers have: crashes, hand-backs, redelivery, the scheduler."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from tests.conftest import flush_redis, redis_url
from tests.helpers import ws_call, ws_closed, ws_connect
from tests.nodes import ROOT, Node, free_port, mint, node, process, worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
START, STATUS, CANCEL, WATCH, FAILING = 20, 21, 22, 23, 915
FAST_RECLAIM = {"REALTIME_JOB_CLAIM_TIMEOUT": "1.5", "REALTIME_JOB_RECLAIM_INTERVAL": "0.2"}


def permissions_with_test_jobs(tmp_path: Path) -> Path:
    """The shipped permissions plus the test-only failing job."""
    path = tmp_path / "permissions.toml"
    text = (ROOT / "permissions.toml").read_text()
    path.write_text(text.replace("[packages]\n", '[packages]\n"test.failing_job" = ["user"]\n', 1))
    return path


@dataclass
class Jobs:
    """A server (and, on Redis, its workers) plus what a test needs to reach them."""

    tmp_path: Path
    env: dict[str, str]
    nodes: list[Node]
    workers: list[Node] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.nodes[0].address

    def token(self, sub: str) -> str:
        if sub not in self.tokens:
            self.tokens[sub] = mint(self.tmp_path, sub)
        return self.tokens[sub]

    def add_worker(self, name: str, metrics: bool = False, **env: str) -> Node:
        """A worker; with `metrics`, its address is where it serves its own /metrics."""
        port = free_port()
        if metrics:
            env = {"REALTIME_WORKER_METRICS_PORT": str(port), **env}
        started = self.stack.enter_context(worker(self.tmp_path, name, **{**self.env, **env}))
        started.address = f"127.0.0.1:{port}"
        self.workers.append(started)
        return started

    def add_node(self, name: str) -> Node:
        started = self.stack.enter_context(node(self.tmp_path, name, **self.env))
        self.nodes.append(started)
        return started

    async def job_row(self, job_id: str) -> dict[str, Any]:
        connection = await asyncpg.connect(self.env["DATABASE_URL"])
        try:
            row = await connection.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        finally:
            await connection.close()
        assert row is not None
        return dict(row)

    def queue_length(self) -> int:
        client = redis.Redis.from_url(redis_url())
        try:
            return int(client.xlen(self.env["REALTIME_JOB_QUEUE"]))
        finally:
            client.close()


def redis_env(tmp_path: Path, pg_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url(),
        "DATABASE_URL": pg_url,
        "REALTIME_JOB_QUEUE": f"jobs:{secrets.token_hex(4)}",
        "REALTIME_HANDLERS": "handlers,tests.failing_jobs",
        "REALTIME_PERMISSIONS": str(permissions_with_test_jobs(tmp_path)),
        **FAST_RECLAIM,
    }


@pytest.fixture
def redis_jobs(tmp_path: Path, pg_url: str) -> Iterator[Jobs]:
    """A node on Redis + PostgreSQL; workers are added by each test."""
    flush_redis()
    env = redis_env(tmp_path, pg_url)
    jobs = Jobs(tmp_path, env, [])
    with jobs.stack:
        jobs.add_node("node-a")
        yield jobs


@pytest.fixture(params=["in-process", "worker"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Jobs]:
    """The embedded default (SQLite, jobs inside the server), then Redis + PostgreSQL with
    a real `realtime worker`."""
    if request.param == "worker":
        redis_jobs = request.getfixturevalue("redis_jobs")
        redis_jobs.add_worker("worker-1", metrics=True)
        yield redis_jobs
        return
    env = {
        "REALTIME_HANDLERS": "handlers,tests.failing_jobs",
        "REALTIME_PERMISSIONS": str(permissions_with_test_jobs(tmp_path)),
    }
    embedded = Jobs(tmp_path, env, [])
    with embedded.stack:
        embedded.add_node("embedded")
        yield embedded


@asynccontextmanager
async def socket(jobs: Jobs, sub: str = "alice", at: Node | None = None) -> AsyncIterator[Any]:
    address = (at or jobs.nodes[0]).address
    headers = {"Authorization": f"Bearer {jobs.token(sub)}"}
    ws = await ws_connect(address, additional_headers=headers)
    try:
        yield ws
    finally:
        await ws.close()


async def start(ws: Any, steps: int, seconds: float) -> str:
    answer = await ws_call(ws, START, {"total_steps": steps, "step_seconds": seconds}, "start")
    assert answer["status_code"] == 0, answer
    return str(answer["data"]["job_id"])


async def watch_until_done(ws: Any, job_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Watch the job; every frame up to and including its job.done, then 0.3 s more to
    catch a second job.done if one were sent."""
    answer = await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
    assert answer["status_code"] == 0, answer
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not events or events[-1].get("event") != "job.done":
            events.append(json.loads(await ws.recv()))
    try:
        async with asyncio.timeout(0.3):
            events.append(json.loads(await ws.recv()))
    except TimeoutError:
        pass
    return events


def steps_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["step"] for e in events if e.get("event") == "job.progress"]


def done_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e.get("event") == "job.done"]


async def status(jobs: Jobs, job_id: str, sub: str = "alice") -> httpx.Response:
    headers = {"Authorization": f"Bearer {jobs.token(sub)}"}
    async with httpx.AsyncClient(base_url=f"http://{jobs.address}") as http:
        return await http.get(f"/jobs/{job_id}", headers=headers)


# -- the same bodies on both configurations -------------------------------------------------


async def test_progress_then_exactly_one_done(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        job_id = await start(ws, 4, 0.05)
        events = await watch_until_done(ws, job_id)
    assert steps_of(events) == [1, 2, 3, 4]
    assert done_of(events) == [{"job_id": job_id, "state": "SUCCESS", "result": {"steps": 4}}]
    final = (await status(jobs, job_id)).json()
    assert final["state"] == "SUCCESS" and final["progress"] == 100


async def test_late_watch_gets_the_history(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        job_id = await start(ws, 3, 0.01)
    for _ in range(300):
        if (await status(jobs, job_id)).json()["state"] == "SUCCESS":
            break
        await asyncio.sleep(0.02)
    async with socket(jobs) as late:
        events = await watch_until_done(late, job_id)
    assert steps_of(events) == [1, 2, 3] and len(done_of(events)) == 1


async def test_only_the_owner_sees_a_job_on_every_door(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        job_id = await start(ws, 100, 0.05)
    async with socket(jobs, "bob") as ws:
        for pkg_id in (STATUS, CANCEL, WATCH):
            answer = await ws_call(ws, pkg_id, {"job_id": job_id})
            assert answer["status_code"] == 4 and answer["error"]["message"] == "job not found"
    assert (await status(jobs, job_id, "bob")).status_code == 404
    bob = {"Authorization": f"Bearer {jobs.token('bob')}"}
    compat = await ws_connect(jobs.address, f"/ws/jobs/{job_id}", additional_headers=bob)
    assert await ws_closed(compat) == (1008, "job not found")
    # bob's cancel did nothing: the job runs on (or, on a slow machine, has just finished)
    assert (await status(jobs, job_id)).json()["state"] in {"PENDING", "STARTED", "SUCCESS"}


async def test_compat_socket_streams_progress_then_closes_1000(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        job_id = await start(ws, 3, 0.05)
    alice = {"Authorization": f"Bearer {jobs.token('alice')}"}
    compat = await ws_connect(jobs.address, f"/ws/jobs/{job_id}", additional_headers=alice)
    objects = [json.loads(await asyncio.wait_for(compat.recv(), 20)) for _ in range(3)]
    assert await ws_closed(compat) == (1000, "job finished")
    assert [o["step"] for o in objects] == [1, 2, 3]


async def test_cancel_mid_job(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        job_id = await start(ws, 50, 0.05)
        await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
        first = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert first["event"] == "job.progress"
        await ws.send(
            json.dumps({"pkg_id": CANCEL, "req_id": "cancel", "data": {"job_id": job_id}})
        )
        frames = []
        async with asyncio.timeout(10):
            while not any(f.get("event") == "job.done" for f in frames) or not any(
                f.get("req_id") == "cancel" for f in frames
            ):
                frames.append(json.loads(await ws.recv()))
        await asyncio.sleep(0.3)  # a further step would have been published by now
        answer = await ws_call(ws, STATUS, {"job_id": job_id}, "after")
    assert next(f for f in frames if f.get("req_id") == "cancel")["data"]["state"] == "CANCELLED"
    assert done_of(frames) == [{"job_id": job_id, "state": "CANCELLED"}]
    assert answer["data"]["state"] == "CANCELLED" and answer["data"]["progress"] < 100


async def test_a_failing_task_is_failure_with_a_safe_message(jobs: Jobs) -> None:
    async with socket(jobs) as ws:
        answer = await ws_call(ws, FAILING, {}, "fail")
        job_id = answer["data"]["job_id"]
        events = await watch_until_done(ws, job_id)
    assert steps_of(events) == [1]
    assert done_of(events) == [{"job_id": job_id, "state": "FAILURE", "error": "the job failed"}]
    final = (await status(jobs, job_id)).json()
    assert final["state"] == "FAILURE" and final["error"] == "the job failed"
    assert "hunter2" not in json.dumps(events) + json.dumps(final)


def _count(text: str, sample: str) -> float:
    line = next((line for line in text.splitlines() if line.startswith(sample + " ")), None)
    return float(line.split()[-1]) if line else 0.0


async def test_jobs_are_counted_where_they_are_queued_and_run(jobs: Jobs) -> None:
    """Queued on the server; started and finished where it runs: the server on the
    embedded default, the worker (its own /metrics) on Redis."""
    async with socket(jobs) as ws:
        job_id = await start(ws, 2, 0.01)
        assert done_of(await watch_until_done(ws, job_id))[0]["state"] == "SUCCESS"
    runner = jobs.workers[0] if jobs.workers else jobs.nodes[0]
    task = 'task="long_running_task"'
    async with httpx.AsyncClient() as http:
        async with asyncio.timeout(15):  # post_execute runs just after job.done is sent
            while True:
                ran = (await http.get(f"http://{runner.address}/metrics")).text
                if _count(ran, f'realtime_jobs_finished_total{{outcome="ok",{task}}}') == 1:
                    break
                await asyncio.sleep(0.1)
        served = (await http.get(f"http://{jobs.address}/metrics")).text
    assert _count(served, f"realtime_jobs_queued_total{{{task}}}") == 1
    assert _count(ran, f"realtime_jobs_started_total{{{task}}}") == 1
    assert _count(ran, f"realtime_job_seconds_count{{{task}}}") == 1
    if jobs.workers:  # the queue's gauges, read from the Redis stream by both processes
        assert "realtime_job_queue_length " in ran and "realtime_job_queue_pending " in served


# -- only with workers ----------------------------------------------------------------------


async def test_watch_from_a_socket_on_another_node(redis_jobs: Jobs) -> None:
    redis_jobs.add_worker("worker-1")
    node_b = redis_jobs.add_node("node-b")
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 5, 0.1)
        async with socket(redis_jobs, at=node_b) as elsewhere:
            events = await watch_until_done(elsewhere, job_id)
    assert steps_of(events) == [1, 2, 3, 4, 5] and len(done_of(events)) == 1


async def test_worker_killed_mid_job_another_worker_finishes_it(redis_jobs: Jobs) -> None:
    doomed = redis_jobs.add_worker("doomed")
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 12, 0.25)
        answer = await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
        assert answer["status_code"] == 0
        events = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
        redis_jobs.add_worker("survivor")  # idle: nothing new will arrive on the queue
        doomed.kill()  # SIGKILL, mid-job
        killed_at = time.monotonic()
        async with asyncio.timeout(30):
            while events[-1].get("event") != "job.done":
                events.append(json.loads(await ws.recv()))
                if len(steps_of(events)) == 4:
                    resumed_after = time.monotonic() - killed_at
    assert steps_of(events) == list(range(1, 13))  # continued where it stopped, no repeats
    assert done_of(events) == [{"job_id": job_id, "state": "SUCCESS", "result": {"steps": 12}}]
    # the claim timeout (1.5 s) plus a reclaim scan (0.2 s) plus one step (0.25 s)
    assert resumed_after < 10, resumed_after
    row = await redis_jobs.job_row(job_id)
    assert row["attempts"] == 2 and row["state"] == "SUCCESS"
    assert redis_jobs.queue_length() == 0  # acknowledged and deleted: nothing piles up


async def test_a_job_longer_than_the_claim_timeout_runs_once(redis_jobs: Jobs) -> None:
    for name in ("worker-1", "worker-2"):
        redis_jobs.add_worker(name)
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 8, 0.5)  # 4 s, with a 1.5 s claim timeout
        events = await watch_until_done(ws, job_id)
    assert steps_of(events) == list(range(1, 9)) and len(done_of(events)) == 1
    assert (await redis_jobs.job_row(job_id))["attempts"] == 1  # never taken over


async def test_a_job_queued_before_any_worker_group_is_run(redis_jobs: Jobs) -> None:
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 2, 0.01)
    client = redis.Redis.from_url(redis_url())
    queue = redis_jobs.env["REALTIME_JOB_QUEUE"]
    try:
        client.xgroup_destroy(queue, f"{queue}:workers")  # as if only a producer had run
    finally:
        client.close()
    redis_jobs.add_worker("late-worker")
    async with socket(redis_jobs) as ws:
        events = await watch_until_done(ws, job_id)
    assert done_of(events)[0]["state"] == "SUCCESS"


async def test_an_idle_worker_stops_at_once_on_sigterm(redis_jobs: Jobs) -> None:
    idle = redis_jobs.add_worker("idle")
    idle.process.send_signal(signal.SIGTERM)
    assert idle.process.wait(5) == 0
    assert "worker stopped" in idle.output()


async def test_sigterm_hands_a_running_job_to_another_worker(redis_jobs: Jobs) -> None:
    slow_takeover = {"REALTIME_JOB_CLAIM_TIMEOUT": "60", "REALTIME_WORKER_GRACE": "0.5"}
    leaving = redis_jobs.add_worker("leaving", **slow_takeover)
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 10, 0.3)
        answer = await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
        assert answer["status_code"] == 0
        events = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
        redis_jobs.add_worker("staying", **slow_takeover)
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(10) == 0
        async with asyncio.timeout(15):  # far less than the 60 s claim timeout
            while events[-1].get("event") != "job.done":
                events.append(json.loads(await ws.recv()))
    assert "handing 1 unfinished jobs back" in leaving.output()
    assert steps_of(events) == list(range(1, 11)) and len(done_of(events)) == 1
    assert (await redis_jobs.job_row(job_id))["attempts"] == 1  # a hand-back is no attempt


async def test_a_job_interrupted_too_often_fails(redis_jobs: Jobs) -> None:
    once = {"REALTIME_JOB_MAX_ATTEMPTS": "1"}
    doomed = redis_jobs.add_worker("doomed", **once)
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 20, 0.2)
        await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
        events = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
        redis_jobs.add_worker("survivor", **once)
        doomed.kill()
        async with asyncio.timeout(20):
            while events[-1].get("event") != "job.done":
                events.append(json.loads(await ws.recv()))
    expected = {"job_id": job_id, "state": "FAILURE", "error": "the job was interrupted too often"}
    assert done_of(events) == [expected]


async def test_scheduler_queues_heartbeat_once_per_period(redis_jobs: Jobs) -> None:
    for name in ("worker-1", "worker-2"):
        redis_jobs.add_worker(name)
    env = {**redis_jobs.env, "REALTIME_HEARTBEAT_SECONDS": "1"}
    with process(redis_jobs.tmp_path, "scheduler", ["scheduler"], "scheduler running", **env):
        await asyncio.sleep(4.5)
    for _ in range(100):  # the workers run what was queued before the scheduler stopped
        if redis_jobs.queue_length() == 0:
            break
        await asyncio.sleep(0.05)
    client = redis.Redis.from_url(redis_url())
    try:
        entries = client.xrange("rt:{system.heartbeat}:s")
    finally:
        client.close()
    beats = [json.loads(fields[b"d"])["at"] for _, fields in entries]
    stamps = sorted(datetime.fromisoformat(beat).timestamp() for beat in beats)
    # one a second over ~4.5 s: a second scheduler, or a beat run twice, would double it
    assert 3 <= len(stamps) <= 5, beats
    # on time: the beats are about a period apart (run times, so a little jitter)
    assert all(0.5 <= later - earlier <= 2 for earlier, later in itertools.pairwise(stamps)), beats


async def test_a_dead_worker_s_jobs_are_all_taken_over_together(redis_jobs: Jobs) -> None:
    doomed = redis_jobs.add_worker("doomed")
    async with socket(redis_jobs) as ws:
        job_ids = [await start(ws, 16, 0.25) for _ in range(4)]
        for job_id in job_ids:
            await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
        survivor = redis_jobs.add_worker("survivor")
        async with asyncio.timeout(10):  # every job has made a step on the doomed worker
            while any(r["step"] == 0 for r in [await redis_jobs.job_row(j) for j in job_ids]):
                await asyncio.sleep(0.05)
        doomed.kill()
        frames = []
        async with asyncio.timeout(30):
            while len(done_of(frames)) < 4:
                frames.append(json.loads(await ws.recv()))
    assert sorted(d["job_id"] for d in done_of(frames)) == sorted(job_ids)
    assert {d["state"] for d in done_of(frames)} == {"SUCCESS"}
    assert survivor.output().count("reclaimed a job") == 4


async def test_a_malformed_queue_entry_neither_stops_the_worker_nor_blocks_jobs(
    redis_jobs: Jobs,
) -> None:
    worker_1 = redis_jobs.add_worker("worker-1")
    client = redis.Redis.from_url(redis_url())
    try:
        client.xadd(redis_jobs.env["REALTIME_JOB_QUEUE"], {"not-data": "x"})
    finally:
        client.close()
    async with socket(redis_jobs) as ws:
        job_id = await start(ws, 2, 0.01)
        events = await watch_until_done(ws, job_id)
    assert done_of(events)[0]["state"] == "SUCCESS"
    assert worker_1.process.poll() is None
    assert "dropping a job queue entry without data" in worker_1.output()
    assert redis_jobs.queue_length() == 0


async def test_a_database_outage_mid_job_runs_it_again_instead_of_failing(
    redis_jobs: Jobs,
) -> None:
    from tests.proxy import running_proxy

    database = redis_jobs.env["DATABASE_URL"]
    with running_proxy(database) as proxy:
        behind = {"DATABASE_URL": proxy.url(database)}
        cut_off = redis_jobs.add_worker("cut-off", **behind)
        async with socket(redis_jobs) as ws:
            job_id = await start(ws, 12, 0.2)
            await ws_call(ws, WATCH, {"job_id": job_id}, "watch")
            events = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(2)]
            proxy.cut()  # the worker's database goes away mid-job
            await asyncio.sleep(1.0)
            proxy.restore()
            async with asyncio.timeout(30):
                while events[-1].get("event") != "job.done":
                    events.append(json.loads(await ws.recv()))
    assert done_of(events) == [{"job_id": job_id, "state": "SUCCESS", "result": {"steps": 12}}]
    assert steps_of(events) == list(range(1, 13))
    assert "it will run again" in cut_off.output()


async def test_consumers_of_stopped_workers_are_forgotten_unless_they_hold_jobs() -> None:
    """Each worker process joins the group under a new name; the clean-up removes the
    silent ones with nothing pending, never one that still holds a job."""
    import redis.asyncio as aioredis

    from realtime.jobs.broker import JobStreamBroker

    flush_redis()
    queue, group = "jobs:prune", "jobs:prune:workers"
    client = aioredis.from_url(redis_url())
    broker = JobStreamBroker(
        redis_url(), queue=queue, group=group, claim_timeout=0.01, reclaim_interval=1
    )
    try:
        await client.xgroup_create(queue, group, id="0", mkstream=True)
        await client.xreadgroup(group, "stopped", {queue: ">"}, count=1, block=10)
        await client.xadd(queue, {"data": "{}"})
        await client.xreadgroup(group, "holding", {queue: ">"}, count=1)
        await asyncio.sleep(0.3)  # both silent for longer than ten claim timeouts
        async with aioredis.Redis(connection_pool=broker.connection_pool) as connection:
            await broker._prune(connection)
        left = await client.xinfo_consumers(queue, group)
        assert [(c["name"], c["pending"]) for c in left] == [(b"holding", 1)]
    finally:
        await client.aclose()
        await broker.shutdown()

"""Several real nodes sharing this machine's Redis and PostgreSQL; Redis faults."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import flush_redis, redis_url
from tests.helpers import ws_call, ws_connect
from tests.nodes import Node, free_port, mint, node, node_env
from tests.proxy import running_proxy

pytestmark = pytest.mark.anyio
SUBSCRIBE, PUBLISH, PRESENCE, ECHO = 30, 32, 33, 40
CHANNELS, JOBS_START, JOBS_CANCEL = 35, 20, 22
UNLIMITED = {
    "REALTIME_RATE_LIMIT": "1000000",
    "REALTIME_RATE_BURST": "1000000",
    "REALTIME_MAX_INFLIGHT": "2048",
    "REALTIME_SEND_QUEUE": "8192",
    "REALTIME_PRESENCE_TTL": "2",
}


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[tuple[Node, Node]]:
    flush_redis()
    env = {"REDIS_URL": redis_url(), "DATABASE_URL": pg_url, **UNLIMITED}
    with node(tmp_path, "a", **env) as a, node(tmp_path, "b", **env) as b:
        yield a, b


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


async def receive(ws: Any, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            frames.append(json.loads(await ws.recv()))
    return frames


async def receive_on(ws: Any, topic: str, count: int) -> list[dict[str, Any]]:
    """`count` frames of `topic`; the socket's personal channel (a subscription too) is
    told `subscription.recovered` after an outage as well: those notices are skipped."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while len(frames) < count:
            frame = json.loads(await ws.recv())
            if frame.get("topic", topic) == topic:  # an answer has no topic: kept
                frames.append(frame)
            else:
                assert frame["event"] == "subscription.recovered", frame
                assert frame["topic"].startswith("user."), frame
    return frames


async def publish_many(ws: Any, topic: str, count: int) -> list[tuple[str, int]]:
    """Pipelined publications of 0..count-1; requests run concurrently, so the bus order
    is the order of the offsets they got: returns (offset, data) in that order."""
    for n in range(count):
        await ws.send(
            json.dumps({"pkg_id": PUBLISH, "req_id": str(n), "data": {"topic": topic, "data": n}})
        )
    # the publisher's own personal channel may be told `subscription.recovered` meanwhile
    answers = [f for f in await receive_on(ws, "-", count) if "req_id" in f]
    assert all(a["status_code"] == 0 for a in answers), answers[:3]
    published = [(a["data"]["offset"], int(a["req_id"])) for a in answers]
    return sorted(published, key=lambda p: int(p[0].rsplit(":", 1)[1]))


async def test_a_thousand_messages_cross_nodes_in_order_and_resume_elsewhere(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    alice, root = mint(tmp_path, "alice"), mint(tmp_path, "root", "user,operator")
    subscriber = await ws_connect(a.address, **bearer(alice))
    assert (await ws_call(subscriber, SUBSCRIBE, {"topic": "broadcast"}))["status_code"] == 0
    publisher = await ws_connect(b.address, **bearer(root))
    published = await publish_many(publisher, "broadcast", 1000)
    got = await receive(subscriber, 1000)
    assert [(m["offset"], m["data"]) for m in got] == published  # all, in bus order
    await subscriber.close()

    again = await ws_connect(b.address, **bearer(alice))  # the other node
    answer = await ws_call(again, SUBSCRIBE, {"topic": "broadcast", "since": got[499]["offset"]})
    assert answer["data"]["recovered"] is True
    replayed = await receive(again, 500)
    assert [(m["offset"], m["data"]) for m in replayed] == published[500:]
    assert (await ws_call(again, ECHO, {"end": 1}))["data"] == {"end": 1}  # nothing more
    for ws in (again, publisher):
        await ws.close()


async def test_presence_spans_nodes_and_a_killed_node_drops_out(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    on_a = await ws_connect(a.address, **bearer(mint(tmp_path, "alice")))
    on_b = await ws_connect(b.address, **bearer(mint(tmp_path, "carl")))
    for ws in (on_a, on_b):
        assert (await ws_call(ws, SUBSCRIBE, {"topic": "broadcast.acme"}))["status_code"] == 0
    both = (await ws_call(on_b, PRESENCE, {"topic": "broadcast.acme"}))["data"]["presence"]
    assert [p["sub"] for p in both] == ["alice", "carl"]
    a.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = (await ws_call(on_b, PRESENCE, {"topic": "broadcast.acme"}))["data"]["presence"]
        if [p["sub"] for p in left] == ["carl"]:
            break
        await asyncio.sleep(0.2)
    assert [p["sub"] for p in left] == ["carl"]
    await on_b.close()


async def test_pushed_presence_spans_nodes_and_a_killed_nodes_users_leave(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    watcher = await ws_connect(b.address, **bearer(mint(tmp_path, "carl")))
    answer = await ws_call(watcher, SUBSCRIBE, {"topic": "broadcast.acme", "presence": True})
    assert [m["sub"] for m in answer["data"]["presence"]] == ["carl"]
    tabs = [await ws_connect(a.address, **bearer(mint(tmp_path, "alice"))) for _ in range(2)]
    for tab in tabs:  # two tabs on node a: one join
        assert (await ws_call(tab, SUBSCRIBE, {"topic": "broadcast.acme"}))["status_code"] == 0
    [joined] = await receive(watcher, 1)
    assert (joined["event"], joined["data"]["sub"]) == ("presence.join", "alice")
    a.kill()  # her entries expire with node a's heartbeat (REALTIME_PRESENCE_TTL 2 s)
    [left] = await receive(watcher, 1)
    assert (left["event"], left["data"]["sub"]) == ("presence.leave", "alice")
    assert (await ws_call(watcher, ECHO, {"end": 1}))["data"] == {"end": 1}  # one leave
    await watcher.close()


async def test_project_changes_reach_lists_open_on_another_node(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = cluster
    listener = await ws_connect(a.address, **bearer(mint(tmp_path, "carl")))
    await ws_call(listener, SUBSCRIBE, {"topic": "projects.acme"})
    async with httpx.AsyncClient(base_url=f"http://{b.address}") as http:
        created = await http.post(
            "/projects",
            json={"name": "x-node"},
            headers={"Authorization": f"Bearer {mint(tmp_path, 'alice')}"},
        )
    event = (await receive(listener, 1))[0]
    assert event["topic"] == "projects.acme"
    assert event["data"] == {"op": "created", "project": created.json()}
    await listener.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """A Redis server of this test's own on a spare port (restartable)."""
    port = free_port()
    command = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        for _ in range(100):
            if (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True
                ).stdout.strip()
                == b"PONG"
            ):
                return process
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    state = {"process": start()}

    def restart() -> None:
        state["process"].kill()
        state["process"].wait(10)
        state["process"] = start()

    yield port, restart
    state["process"].kill()
    state["process"].wait(10)


async def test_a_users_channel_reaches_both_nodes_and_resumes_on_the_other(
    cluster: tuple[Node, Node], tmp_path: Path
) -> None:
    """publish_user, here by a job's end: `jobs.cancel` on node b sends the owner's
    job.done to every socket of that caller on both nodes (no worker runs, so the job
    waits PENDING until cancelled), and to nobody else."""
    a, b = cluster
    alice, carl = mint(tmp_path, "alice"), mint(tmp_path, "carl")
    on_a, on_b = (
        await ws_connect(a.address, **bearer(alice)),
        await ws_connect(b.address, **bearer(alice)),
    )
    stranger = await ws_connect(a.address, **bearer(carl))
    for ws in (on_a, on_b, stranger):  # answered once the server's subscriptions are made
        assert (await ws_call(ws, CHANNELS, {}))["status_code"] == 0

    async def cancelled_job(starter: Any) -> tuple[str, dict[str, Any]]:
        """A job started on `starter` and cancelled on b: its id and what on_b got of it (the
        cancel's answer and the job.done come in either order)."""
        started = await ws_call(starter, JOBS_START, {"total_steps": 1, "step_seconds": 0})
        job_id = str(started["data"]["job_id"])
        cancel = {"pkg_id": JOBS_CANCEL, "req_id": "cancel", "data": {"job_id": job_id}}
        await on_b.send(json.dumps(cancel))
        frames = await receive(on_b, 2)
        [answer] = [f for f in frames if f.get("req_id") == "cancel"]
        assert answer["data"] == {"job_id": job_id, "state": "CANCELLED"}
        [event] = [f for f in frames if "event" in f]
        return job_id, event

    job, got_b = await cancelled_job(on_a)
    [got_a] = await receive(on_a, 1)
    expected = {"job_id": job, "state": "CANCELLED"}
    assert got_a == got_b and got_a["data"] == expected
    assert got_a["event"] == "job.done" and got_a["topic"] == "user.acme.alice"
    assert (await ws_call(stranger, ECHO, {"x": 1}))["data"] == {"x": 1}  # nothing for carl

    await on_a.close()
    missed, seen_b = zip(*[await cancelled_job(on_b) for _ in range(2)], strict=True)
    since = f"since.{got_a['topic']}={got_a['offset']}"
    resumed = await ws_connect(a.address, path=f"/ws?{since}", **bearer(alice))
    replayed = await receive(resumed, 2)
    assert [m["data"]["job_id"] for m in replayed] == list(missed)
    assert replayed == list(seen_b)  # the same events, offsets included
    assert (await ws_call(resumed, ECHO, {"end": 1}))["data"] == {"end": 1}  # once each
    for ws in (on_b, stranger, resumed):
        await ws.close()


async def test_redis_restarted_empty_resumes_with_recovered_false(
    tmp_path: Path, own_redis: tuple[int, Any]
) -> None:
    port, restart = own_redis
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", **UNLIMITED}
    with node(tmp_path, "solo", **env) as solo:
        alice, root = mint(tmp_path, "alice"), mint(tmp_path, "root", "user,operator")
        sub = await ws_connect(solo.address, **bearer(alice))
        pub = await ws_connect(solo.address, **bearer(root))
        await ws_call(sub, SUBSCRIBE, {"topic": "broadcast"})
        published = await publish_many(pub, "broadcast", 3)
        assert [(m["offset"], m["data"]) for m in await receive(sub, 3)] == published
        restart()  # Redis comes back empty: the stream and its epoch are gone
        # each subscription is told, alice's personal channel too
        notices = {n["topic"]: n for n in await receive(sub, 2)}
        assert sorted(notices) == ["broadcast", "user.acme.alice"]
        assert {n["event"] for n in notices.values()} == {"subscription.recovered"}
        assert {n["data"]["recovered"] for n in notices.values()} == {False}
        assert (await ws_call(sub, ECHO, {"ok": 1}))["data"] == {"ok": 1}
        published = await publish_many(pub, "broadcast", 2)
        live = await receive(sub, 2)
        assert [(m.get("offset"), m["data"]) for m in live] == published, live
        assert published[0][0].rsplit(":", 1)[1] == "1"  # a new epoch, counting from 1
        async with httpx.AsyncClient(base_url=f"http://{solo.address}") as http:
            assert (await http.get("/ready")).status_code == 200
        for ws in (sub, pub):
            await ws.close()


async def test_redis_unreachable_then_back_loses_nothing(tmp_path: Path) -> None:
    flush_redis()
    with running_proxy(redis_url()) as proxy:
        through_proxy = {"REDIS_URL": proxy.url(redis_url()), **UNLIMITED}
        direct = {"REDIS_URL": redis_url(), **UNLIMITED}
        with (
            node(tmp_path, "behind", **through_proxy) as behind,
            node(tmp_path, "direct", **direct) as other,
        ):
            sub = await ws_connect(behind.address, **bearer(mint(tmp_path, "alice")))
            pub = await ws_connect(other.address, **bearer(mint(tmp_path, "root", "user,operator")))
            await ws_call(sub, SUBSCRIBE, {"topic": "broadcast"})
            proxy.cut()
            async with httpx.AsyncClient(base_url=f"http://{behind.address}") as http:
                for _ in range(50):
                    if (await http.get("/ready")).status_code == 503:
                        break
                    await asyncio.sleep(0.1)
                assert (await http.get("/ready")).json()["checks"]["bus"] is False
                # request/response packages that need no bus keep working
                assert (await ws_call(sub, ECHO, {"during": "outage"}))["status_code"] == 0
                published = await publish_many(pub, "broadcast", 5)  # elsewhere, meanwhile
                proxy.restore()
                frames = await receive_on(sub, "broadcast", 6)
                assert (await http.get("/ready")).status_code == 200
            assert frames[0]["event"] == "subscription.recovered"
            assert frames[0]["data"]["recovered"] is True
            assert [(m["offset"], m["data"]) for m in frames[1:]] == published
            for ws in (sub, pub):
                await ws.close()


async def test_serve_with_workers_shares_the_redis_bus(tmp_path: Path) -> None:
    """Sockets land on different worker processes; a publication reaches all of them."""
    flush_redis()
    port = free_port()
    env = node_env(tmp_path, REDIS_URL=redis_url(), **UNLIMITED)
    log = tmp_path / "workers.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("Application startup complete") < 2:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        address = f"127.0.0.1:{port}"
        alice = mint(tmp_path, "alice")
        subscribers = [await ws_connect(address, **bearer(alice)) for _ in range(8)]
        for ws in subscribers:
            await ws_call(ws, SUBSCRIBE, {"topic": "broadcast"})
        publisher = await ws_connect(address, **bearer(mint(tmp_path, "root", "user,operator")))
        await ws_call(publisher, PUBLISH, {"topic": "broadcast", "data": "to every worker"})
        for ws in subscribers:
            assert (await receive(ws, 1))[0]["data"] == "to every worker"
        pids = {
            line.split("[")[1].split("]")[0]
            for line in log.read_text().splitlines()
            if "Started server process" in line
        }
        assert len(pids) == 2
        for ws in (*subscribers, publisher):
            await ws.close()
    finally:
        process.terminate()
        process.wait(20)


def test_workers_without_redis_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "realtime.cli", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=node_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers needs REDIS_URL" in done.stderr.strip().splitlines()[-1]

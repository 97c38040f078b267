"""The package dispatch on a socket (realtime.socket.frames, realtime.dispatch).

The two copies of the hot path, an inline=True handler run on the reader and an
`async def` one run in a task, must answer alike and count alike, and so must a plain
`def` run in a thread. A slow plain `def` stalls nothing; a slow inline one is logged and
counted. A handler that subscribes and then fails keeps no subscription.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from realtime import Context, Package
from realtime.app import create_app
from realtime.exceptions import ConfigError, Conflict, NotFound
from realtime.protocol import Status
from realtime.settings import Settings
from realtime.types import JSONObject
from tests.conftest import APP_PACKAGES, HERE
from tests.helpers import auth_header, call, request
from tests.packages import TEST_PACKAGES

SCHEMA = {
    "type": "object",
    "properties": {
        "do": {"enum": ["ok", "missing", "not-json", "crash"]},
        "n": {"type": "integer"},
    },
    "required": ["do"],
}


def twin(ctx: Context, data: JSONObject) -> Any:
    """One behaviour per `do`: an answer, a RequestError, data that is not JSON, a bug."""
    match data["do"]:
        case "ok":
            return {"n": data.get("n"), "package": ctx.package.name}
        case "missing":
            raise NotFound("nothing here")
        case "not-json":
            return {"value": object()}
        case _:
            raise RuntimeError("a bug")


async def async_twin(ctx: Context, data: JSONObject) -> Any:
    return twin(ctx, data)


# set by the tests once they have seen what must come first
RELEASE = threading.Event()


def wait_for_release(ctx: Context, data: JSONObject) -> JSONObject:
    """A slow plain `def`: runs in a thread, so the socket keeps being served."""
    return {"released": RELEASE.wait(5)}


def slow_inline(ctx: Context, data: JSONObject) -> JSONObject:
    time.sleep(0.05)  # 50 ms of computation on the event loop
    return {"slept": True}


async def subscribe_then_fail(ctx: Context, data: JSONObject) -> Any:
    await ctx.subscribe(data["topic"])
    await asyncio.sleep(data.get("wait", 0))
    raise Conflict("changed meanwhile")


INLINE, TASK, FAILING, THREAD, WAIT, SLOW_INLINE, STUCK = range(950, 957)
ECHO = 40
PACKAGES = [
    Package(INLINE, "twin.inline", twin, schema=SCHEMA, inline=True),
    Package(TASK, "twin.task", async_twin, schema=SCHEMA),
    Package(FAILING, "twin.subscribe_then_fail", subscribe_then_fail),
    Package(THREAD, "twin.thread", twin, schema=SCHEMA),
    Package(WAIT, "modes.wait", wait_for_release),
    Package(SLOW_INLINE, "modes.slow_inline", slow_inline, inline=True),
    Package(STUCK, "modes.stuck", wait_for_release, timeout=0.2),
]
CASES: list[JSONObject] = [
    {"do": "ok", "n": 7},
    {"do": "missing"},
    {"do": "not-json"},
    {"do": "crash"},
    {"do": "nope"},  # fails the schema: INVALID_DATA
    {"n": 1},  # misses `do`
]


@pytest.fixture
def app_client(settings: Settings, tmp_path: Path) -> Any:
    permissions = tmp_path / "permissions.toml"
    extra = "".join(f'"{p.name}" = ["user"]\n' for p in PACKAGES)
    text = (HERE / "permissions.toml").read_text()
    permissions.write_text(text.replace("[packages]\n", "[packages]\n" + extra, 1))
    app = create_app(
        settings.replace(permissions_file=str(permissions)),
        [*APP_PACKAGES, *TEST_PACKAGES, *PACKAGES],
    )
    with TestClient(app) as client:
        yield client


def _without_package(answer: JSONObject) -> JSONObject:
    answer = dict(answer)
    answer.pop("pkg_id")
    data = answer.get("data")
    if isinstance(data, dict) and "package" in data:
        answer["data"] = {**data, "package": "-"}
    return answer


def _counts(metrics: str, package: str) -> dict[str, float]:
    pattern = (
        rf'realtime_requests_total\{{package="{package}",status="(\w+)",transport="ws"\}} (\S+)'
    )
    return {status: float(count) for status, count in re.findall(pattern, metrics)}


def test_inline_and_task_handlers_give_the_same_answers_and_metrics(
    app_client: TestClient, token: str
) -> None:
    with app_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        for n, case in enumerate(CASES):
            inline = call(ws, INLINE, case, f"i{n}")
            task = call(ws, TASK, case, f"i{n}")
            thread = call(ws, THREAD, case, f"i{n}")
            assert _without_package(inline) == _without_package(task), case
            assert _without_package(thread) == _without_package(task), case
    metrics = app_client.get("/metrics").text
    task_counts = _counts(metrics, "twin.task")
    assert _counts(metrics, "twin.inline") == task_counts
    assert _counts(metrics, "twin.thread") == task_counts
    assert task_counts["NOT_FOUND"] == 1 and task_counts["INVALID_DATA"] == 2
    assert task_counts["ERROR"] == 1  # the bug; the answer that is not JSON counts OK


def test_a_handler_that_fails_after_subscribing_keeps_no_subscription(
    app_client: TestClient, token: str
) -> None:
    with app_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answer = call(ws, FAILING, {"topic": "chat.room"})
        assert answer["status_code"] == Status.CONFLICT  # and no subscription
        request(ws, 32, {"topic": "chat.room", "data": {"n": 1}}, "p")
        # the publication's answer, then an echo: no `message` event in between
        frames = [ws.receive_json(), call(ws, ECHO, {"x": 1}, "e")]
        assert [f.get("req_id") for f in frames] == ["p", "e"]
        assert frames[0]["status_code"] == 0
        presence = call(ws, 33, {"topic": "chat.room"}, "w")
        assert presence["data"]["presence"] == []


def test_a_failing_request_drops_only_its_own_subscription(
    app_client: TestClient, token: str
) -> None:
    """A subscribes and fails later; meanwhile B subscribed to the same topic and was
    answered: B's subscription stays (A's failure must not take it with it)."""
    with app_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        request(ws, FAILING, {"topic": "chat.room", "wait": 0.3}, "a")
        subscribed = call(ws, 30, {"topic": "chat.room"}, "b")  # topics.subscribe
        assert subscribed["status_code"] == 0
        assert ws.receive_json()["req_id"] == "a"  # CONFLICT, after B's answer
        request(ws, 32, {"topic": "chat.room", "data": {"n": 2}}, "p")
        request(ws, ECHO, {"x": 1}, "e")  # answered after the event, if there is one
        frames = [ws.receive_json()]
        while frames[-1].get("req_id") != "e":
            frames.append(ws.receive_json())
        events = [f for f in frames if f.get("event") == "message"]
        assert [e["data"] for e in events] == [{"n": 2}]


def test_a_slow_plain_def_runs_in_a_thread_and_stalls_nothing(
    app_client: TestClient, token: str
) -> None:
    """The slow handler is answered only after the echo sent behind it: the reader went
    on while a thread ran it (inline, the echo would have waited)."""
    RELEASE.clear()
    with app_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        request(ws, WAIT, {}, "slow")
        assert call(ws, ECHO, {"x": 1}, "e") == {
            "pkg_id": ECHO,
            "req_id": "e",
            "status_code": 0,
            "data": {"x": 1},
        }
        RELEASE.set()
        answer = ws.receive_json()
        assert (answer["req_id"], answer["status_code"]) == ("slow", 0)
        assert answer["data"] == {"released": True}


def test_a_plain_def_past_its_deadline_answers_timeout(
    app_client: TestClient, token: str
) -> None:
    RELEASE.clear()
    try:
        with app_client.websocket_connect("/ws", headers=auth_header(token)) as ws:
            answer = call(ws, STUCK, {}, "s")
            assert (answer["req_id"], answer["status_code"]) == ("s", Status.TIMEOUT)
            assert call(ws, ECHO, {"x": 2}, "e")["data"] == {"x": 2}  # still served
    finally:
        RELEASE.set()  # the thread cannot be stopped: let it finish


def test_a_slow_inline_handler_is_logged_and_counted(
    app_client: TestClient, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """inline=True runs on the event loop: the echo behind it waits its 50 ms (that is
    the documented price), and the overrun does not go unnoticed."""
    with (
        caplog.at_level(logging.WARNING, "realtime.dispatch"),
        app_client.websocket_connect("/ws", headers=auth_header(token)) as ws,
    ):
        request(ws, SLOW_INLINE, {}, "slow")
        request(ws, ECHO, {"x": 1}, "e")
        assert [ws.receive_json()["req_id"] for _ in range(2)] == ["slow", "e"]
        call(ws, SLOW_INLINE, {}, "again")
    metrics = app_client.get("/metrics").text
    assert 'realtime_inline_overruns_total{package="modes.slow_inline"} 2.0' in metrics
    warnings = [r.getMessage() for r in caplog.records if "modes.slow_inline" in r.getMessage()]
    assert len(warnings) == 1  # logged once a minute at most, counted every time
    assert "held the event loop" in warnings[0]
    assert 'realtime_inline_overruns_total{package="echo"}' not in metrics


def test_inline_needs_a_plain_def() -> None:
    with pytest.raises(ConfigError, match="inline=True needs a plain `def`"):
        Package(960, "modes.bad", async_twin, inline=True)
    assert Package(961, "a", twin).runs == "thread"
    assert Package(962, "b", twin, inline=True).runs == "inline"
    assert Package(963, "c", async_twin).runs == "task"

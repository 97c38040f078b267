"""The package dispatch on a socket (realtime.socket.frames, realtime.dispatch).

The two copies of the hot path, a plain `def` handler run inline and an `async def` one
run in a task, must answer alike and count alike. A handler that subscribes and then
fails keeps no subscription.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import handlers
from realtime import Context, Package
from realtime.app import create_app
from realtime.exceptions import Conflict, NotFound
from realtime.protocol import Status
from realtime.settings import Settings
from realtime.types import JSONObject
from tests.conftest import HERE
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


async def subscribe_then_fail(ctx: Context, data: JSONObject) -> Any:
    await ctx.subscribe(data["topic"])
    await asyncio.sleep(data.get("wait", 0))
    raise Conflict("changed meanwhile")


INLINE, TASK, FAILING = 950, 951, 952
ECHO = 40
PACKAGES = [
    Package(INLINE, "twin.inline", twin, schema=SCHEMA),
    Package(TASK, "twin.task", async_twin, schema=SCHEMA),
    Package(FAILING, "twin.subscribe_then_fail", subscribe_then_fail),
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
    extra = (
        '"twin.inline" = ["user"]\n"twin.task" = ["user"]\n"twin.subscribe_then_fail" = ["user"]\n'
    )
    text = (HERE / "permissions.toml").read_text()
    permissions.write_text(text.replace("[packages]\n", "[packages]\n" + extra, 1))
    app = create_app(
        settings.replace(permissions_file=str(permissions)),
        [*handlers.PACKAGES, *TEST_PACKAGES, *PACKAGES],
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
            assert _without_package(inline) == _without_package(task), case
    metrics = app_client.get("/metrics").text
    task_counts = _counts(metrics, "twin.task")
    assert _counts(metrics, "twin.inline") == task_counts
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

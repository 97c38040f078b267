"""`topics.history` on the in-process bus and on Redis (fixture `bus`): the right slice,
pages by offset both ways, the permission of subscribe (roles, then the authorizer)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from tests.helpers import auth_header, call, request

SUBSCRIBE, PUBLISH, HISTORY, ECHO = 30, 32, 34, 40


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
    }


def publish(ws: WebSocketTestSession, topic: str, count: int) -> list[str]:
    """Publish 0..count-1 one after the other; their offsets."""
    offsets = []
    for n in range(count):
        answer = call(ws, PUBLISH, {"topic": topic, "data": {"n": n}}, req_id=f"p{n}")
        assert answer["status_code"] == 0, answer
        offsets.append(answer["data"]["offset"])
    return offsets


def history(ws: WebSocketTestSession, **data: Any) -> dict[str, Any]:
    answer = call(ws, HISTORY, data, req_id="h")
    assert answer["status_code"] == 0, answer
    return dict(answer["data"])


def pages(ws: WebSocketTestSession, topic: str, limit: int, reverse: bool) -> list[Any]:
    """Every page, following `next` while `more`."""
    found, since = [], None
    while True:
        data: dict[str, Any] = {"topic": topic, "limit": limit, "reverse": reverse}
        if since is not None:
            data["since"] = since
        page = history(ws, **data)
        found.append(page)
        if not page["more"]:
            return found
        since = page["next"]


def test_history_pages_forward_from_the_oldest(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        offsets = publish(ws, "chat.room", 25)
        found = pages(ws, "chat.room", 10, reverse=False)
    assert [len(page["publications"]) for page in found] == [10, 10, 5]
    assert [page["more"] for page in found] == [True, True, False]
    every = [p for page in found for p in page["publications"]]
    assert [p["offset"] for p in every] == offsets  # all of them, once, in order
    assert [p["data"] for p in every] == [{"n": n} for n in range(25)]
    assert {p["event"] for p in every} == {"message"}
    assert [page["next"] for page in found] == [offsets[9], offsets[19], offsets[24]]
    assert {page["offset"] for page in found} == {offsets[-1]}  # the topic's top


def test_history_reversed_is_newest_first_and_pages_back(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        offsets = publish(ws, "chat.room", 25)
        found = pages(ws, "chat.room", 10, reverse=True)
        after = history(ws, topic="chat.room", since=offsets[20], limit=3)
    every = [p["offset"] for page in found for p in page["publications"]]
    assert every == offsets[::-1]
    assert [page["more"] for page in found] == [True, True, False]
    assert [p["data"] for p in after["publications"]] == [{"n": 21}, {"n": 22}, {"n": 23}]
    assert after["more"] is True and after["next"] == offsets[23]


def test_render_the_last_messages_then_go_live_without_a_gap_or_a_repeat(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    headers = auth_header(tokens["alice"])
    with (
        bus_client.websocket_connect("/ws", headers=headers) as pub,
        bus_client.websocket_connect("/ws", headers=headers) as ws,
    ):
        publish(pub, "chat.room", 8)
        last = history(ws, topic="chat.room", limit=3, reverse=True)
        assert [p["data"]["n"] for p in last["publications"]] == [7, 6, 5]
        publish(pub, "chat.room", 2)  # n 0 and 1 again, after what was read
        answer = call(ws, SUBSCRIBE, {"topic": "chat.room", "since": last["offset"]})
        assert answer["data"]["recovered"] is True
        replayed = [ws.receive_json() for _ in range(2)]
        request(pub, PUBLISH, {"topic": "chat.room", "data": "live"}, req_id="live")
        assert pub.receive_json()["status_code"] == 0
        live = ws.receive_json()
    assert [m["data"] for m in replayed] == [{"n": 0}, {"n": 1}]
    assert live["data"] == "live"


def test_an_empty_topic_has_no_history(bus_client: TestClient, tokens: dict[str, str]) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        page = history(ws, topic="chat.empty")
    assert page["publications"] == [] and page["more"] is False and page["next"] is None
    assert page["offset"].endswith(":0")


def test_history_events_keep_their_names(bus_client: TestClient, tokens: dict[str, str]) -> None:
    hub = bus_client.app.state.services.hub  # type: ignore[attr-defined]
    assert bus_client.portal is not None
    bus_client.portal.call(hub.publish, "chat.jobs", {"job_id": "j"}, "job.done")
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        page = history(ws, topic="chat.jobs")
    assert [(p["event"], p["data"]) for p in page["publications"]] == [
        ("job.done", {"job_id": "j"})
    ]


def test_history_has_the_permission_of_subscribe(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    project = bus_client.post("/projects", json={"name": "p"}, headers=auth_header(tokens["alice"]))
    topic = f"project.{project.json()['id']}"
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as ws:

        def status(data: dict[str, Any]) -> int:
            return int(call(ws, HISTORY, data)["status_code"])

        assert status({"topic": "broadcast.acme"}) == 3  # another tenant's: the roles
        assert status({"topic": "user.alice"}) == 3
        assert status({"topic": "unlisted"}) == 3
        assert status({"topic": topic}) == 4  # the authorizer: another tenant's project
        assert status({"topic": "broadcast.globex"}) == 0
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        page = call(ws, HISTORY, {"topic": topic, "reverse": True})["data"]
    assert [p["data"]["op"] for p in page["publications"]] == ["created"]


def test_bad_history_requests(bus_client: TestClient, tokens: dict[str, str]) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        top = publish(ws, "chat.room", 1)[0]
        epoch = top.rsplit(":", 1)[0]

        def answer(data: dict[str, Any]) -> tuple[int, str]:
            got = call(ws, HISTORY, data)
            return got["status_code"], got.get("error", {}).get("message", "")

        for limit in (0, 101, "5"):
            assert answer({"topic": "chat.room", "limit": limit})[0] == 2
        assert answer({"topic": "chat.room", "since": "garbage"}) == (
            2,
            "since 'garbage' is not an offset",
        )
        code, message = answer({"topic": "chat.room", "since": f"other{epoch}:1"})
        assert code == 8 and "another epoch" in message
        assert answer({"topic": "chat.room", "extra": 1})[0] == 2
        assert call(ws, ECHO, {"ok": 1})["data"] == {"ok": 1}

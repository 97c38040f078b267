"""Presence that pushes (`topics.subscribe {presence: true}`) on the in-process bus and on
Redis (fixture `bus`): a snapshot in the answer, then `presence.join`/`presence.leave`
counted per user, not per socket."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from tests.helpers import auth_header, call

SUBSCRIBE, ECHO = 30, 40


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme", name="Alice A"),
        "carl": issuer.mint("carl", ["user"], tenant="acme", name="Carl C"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "guest": issuer.mint("gus", ["guest"], tenant="acme"),
    }


def join(ws: WebSocketTestSession, topic: str, presence: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"topic": topic}
    if presence:
        data["presence"] = True
    answer = call(ws, SUBSCRIBE, data, req_id="join")
    assert answer["status_code"] == 0, answer
    return dict(answer["data"])


def test_two_tabs_are_one_join_and_the_last_one_closing_is_the_leave(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as watcher:
        answer = join(watcher, "chat.room", presence=True)
        assert answer["presence"] == [{"sub": "carl", "name": "Carl C"}]
        assert answer["presence_capped"] is False
        headers = auth_header(tokens["alice"])
        with bus_client.websocket_connect("/ws", headers=headers) as tab1:
            join(tab1, "chat.room")
            with bus_client.websocket_connect("/ws", headers=headers) as tab2:
                join(tab2, "chat.room")
                joined = watcher.receive_json()
            # tab2 closed: alice is still here (tab1)
        left = watcher.receive_json()  # tab1 closed: now she left
        assert call(watcher, ECHO, {"end": 1})["data"] == {"end": 1}  # nothing else came
    member = {"sub": "alice", "name": "Alice A"}
    assert joined == {"event": "presence.join", "topic": "chat.room", "data": member}
    assert left == {"event": "presence.leave", "topic": "chat.room", "data": member}


def test_a_late_subscriber_gets_the_snapshot_then_the_diffs(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as alice,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as late,
    ):
        join(alice, "chat.lobby")
        snapshot = join(late, "chat.lobby", presence=True)["presence"]
        assert [m["sub"] for m in snapshot] == ["alice", "carl"]
        alice.close()
        assert late.receive_json()["event"] == "presence.leave"


def test_presence_events_need_the_presence_role(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        # broadcast: any user may subscribe; its presence is the operator's only
        denied = call(ws, SUBSCRIBE, {"topic": "broadcast", "presence": True})
        assert denied["status_code"] == 3
        assert denied["error"]["message"] == "you may not presence on topic 'broadcast'"
        assert call(ws, SUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0


def test_every_watcher_of_a_node_gets_the_same_events(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as one,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as two,
    ):
        join(one, "chat.many", presence=True)
        join(two, "chat.many", presence=True)
        with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
            join(ws, "chat.many")
            got = [one.receive_json(), two.receive_json()]
        gone = [one.receive_json(), two.receive_json()]
    assert [e["event"] for e in got] == ["presence.join"] * 2 and got[0] == got[1]
    assert [e["event"] for e in gone] == ["presence.leave"] * 2 and gone[0] == gone[1]

"""Topics on the in-process bus and on real Redis (fixture `bus`): delivery, resume,
permissions, presence, project events, the subscribe/publish race."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app
from tests.helpers import auth_header, call, request, server_frames

SUBSCRIBE, UNSUBSCRIBE, PUBLISH, PRESENCE = 30, 31, 32, 33
ECHO = 40


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme", name="Alice A"),
        "carl": issuer.mint("carl", ["user"], tenant="acme", name="Carl C"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "root": issuer.mint("root", ["user", "operator"], tenant="acme"),
    }


def messages(ws: WebSocketTestSession, count: int) -> list[dict[str, Any]]:
    received = [ws.receive_json() for _ in range(count)]
    assert all(m.get("event") == "message" for m in received), received
    return received


def seq(offset: str) -> int:
    return int(offset.rsplit(":", 1)[1])


def test_publish_reaches_subscribers_in_order(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as sub,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
    ):
        answer = call(sub, SUBSCRIBE, {"topic": "broadcast"})
        assert answer["status_code"] == 0
        assert answer["data"]["topic"] == "broadcast" and answer["data"]["recovered"] is False
        offsets = [
            call(pub, PUBLISH, {"topic": "broadcast", "data": {"n": n}}, req_id=f"p{n}")["data"][
                "offset"
            ]
            for n in range(5)
        ]
        got = messages(sub, 5)
    assert [m["data"] for m in got] == [{"n": n} for n in range(5)]
    assert [m["offset"] for m in got] == offsets
    assert all(m["topic"] == "broadcast" for m in got)
    assert [seq(o) for o in offsets] == list(
        range(seq(answer["data"]["offset"]) + 1, seq(answer["data"]["offset"]) + 6)
    )


def test_resume_from_an_offset_replays_exactly_what_followed(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    headers = auth_header(tokens["alice"])
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub:
        with bus_client.websocket_connect("/ws", headers=headers) as first:
            call(first, SUBSCRIBE, {"topic": "broadcast"})
            for n in range(5):
                call(pub, PUBLISH, {"topic": "broadcast", "data": n})
            seen = messages(first, 5)
        for n in range(5, 8):  # published while nobody listens
            call(pub, PUBLISH, {"topic": "broadcast", "data": n})
        with bus_client.websocket_connect("/ws", headers=headers) as again:
            answer = call(again, SUBSCRIBE, {"topic": "broadcast", "since": seen[1]["offset"]})
            assert answer["data"]["recovered"] is True
            replayed = messages(again, 6)
            call(pub, PUBLISH, {"topic": "broadcast", "data": 8})
            live = messages(again, 1)
    assert [m["data"] for m in replayed + live] == [2, 3, 4, 5, 6, 7, 8]
    assert answer["data"]["offset"] == replayed[-1]["offset"]


def test_unrecoverable_offsets_answer_recovered_false_and_replay_nothing(
    tmp_path: Path, bus: Settings, tokens: dict[str, str]
) -> None:
    with (
        TestClient(build_app(bus.replace(stream_retention=5))) as client,
        client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
        client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws,
    ):
        first = call(pub, PUBLISH, {"topic": "broadcast", "data": 0})["data"]["offset"]
        # Redis trims approximately (whole stream nodes of 100): publish well past that
        for n in range(1, 300):
            request(pub, PUBLISH, {"topic": "broadcast", "data": n}, req_id=f"p{n}")
        assert all(pub.receive_json()["status_code"] == 0 for _ in range(1, 300))
        epoch = first.rsplit(":", 1)[0]
        for since in (first, f"other{epoch}:1", f"{epoch}:99999", "garbage"):
            answer = call(ws, SUBSCRIBE, {"topic": "broadcast", "since": since})
            assert answer["status_code"] == 0 and answer["data"]["recovered"] is False, since
            assert seq(answer["data"]["offset"]) == 300
        call(pub, PUBLISH, {"topic": "broadcast", "data": "next"}, req_id="last")
        following = ws.receive_json()
    assert following["event"] == "message" and following["data"] == "next"  # no replay came first


def test_topic_permissions(bus_client: TestClient, tokens: dict[str, str]) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:

        def status(pkg_id: int, data: dict[str, Any]) -> int:
            return int(call(ws, pkg_id, data)["status_code"])

        assert status(SUBSCRIBE, {"topic": "user.alice"}) == 0
        assert status(SUBSCRIBE, {"topic": "user.bob"}) == 3
        assert status(SUBSCRIBE, {"topic": "projects.acme"}) == 0
        assert status(SUBSCRIBE, {"topic": "projects.globex"}) == 3
        assert status(PUBLISH, {"topic": "broadcast", "data": 1}) == 3
        assert status(PUBLISH, {"topic": "projects.acme", "data": 1}) == 3  # server only
        assert status(PUBLISH, {"topic": "user.alice", "data": 1}) == 3
        assert status(SUBSCRIBE, {"topic": "unlisted"}) == 3
        assert status(PRESENCE, {"topic": "user.bob"}) == 3
        assert status(SUBSCRIBE, {"topic": "bad topic!"}) == 2
        assert status(PUBLISH, {"topic": "chat.room1", "data": {"hi": 1}}) == 0
        assert status(SUBSCRIBE, {"topic": "chat.room1.nested"}) == 3  # * is one segment


def test_unsubscribe_stops_delivery(bus_client: TestClient, tokens: dict[str, str]) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as pub,
    ):
        call(ws, SUBSCRIBE, {"topic": "chat.a"})
        call(ws, SUBSCRIBE, {"topic": "chat.b"})
        assert call(ws, UNSUBSCRIBE, {"topic": "chat.a"})["data"] == {"topic": "chat.a"}
        call(pub, PUBLISH, {"topic": "chat.a", "data": "a"}, req_id="pa")
        call(pub, PUBLISH, {"topic": "chat.b", "data": "b"}, req_id="pb")
        assert messages(ws, 1)[0]["topic"] == "chat.b"
        assert call(ws, ECHO, {"x": 1})["data"] == {"x": 1}  # nothing else was queued


def test_presence_across_users_and_after_leaving(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as a:
        call(a, SUBSCRIBE, {"topic": "chat.lobby"})
        with bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as c:
            call(c, SUBSCRIBE, {"topic": "chat.lobby"})
            both = call(a, PRESENCE, {"topic": "chat.lobby"})["data"]
        assert both == {
            "topic": "chat.lobby",
            "presence": [{"sub": "alice", "name": "Alice A"}, {"sub": "carl", "name": "Carl C"}],
        }
        for _ in range(50):  # carl's socket closed: its entry goes (in the background)
            alone = call(a, PRESENCE, {"topic": "chat.lobby"})["data"]["presence"]
            if len(alone) == 1:
                break
        assert alone == [{"sub": "alice", "name": "Alice A"}]
        call(a, UNSUBSCRIBE, {"topic": "chat.lobby"})
        for _ in range(50):
            empty = call(a, PRESENCE, {"topic": "chat.lobby"})["data"]["presence"]
            if not empty:
                break
        assert empty == []


def test_project_changes_are_published_to_the_tenant(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as listener,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as other,
    ):
        call(listener, SUBSCRIBE, {"topic": "projects.acme"})
        call(other, SUBSCRIBE, {"topic": "projects.globex"})
        headers = auth_header(tokens["alice"])
        created = bus_client.post("/projects", json={"name": "live"}, headers=headers).json()
        updated = bus_client.patch(
            f"/projects/{created['id']}", json={"name": "live 2"}, headers=headers
        ).json()
        deleted = bus_client.delete(f"/projects/{created['id']}", headers=headers).json()
        events = messages(listener, 3)
        assert call(other, ECHO, {})["status_code"] == 0  # bob's tenant heard nothing first
    assert [e["data"]["op"] for e in events] == ["created", "updated", "deleted"]
    assert [e["data"]["project"] for e in events] == [created, updated, deleted]
    assert all(e["topic"] == "projects.acme" for e in events)


def test_subscribe_racing_a_burst_loses_nothing_after_the_answer(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    total = 300
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as sub,
    ):

        def burst() -> None:
            for n in range(total):
                request(pub, PUBLISH, {"topic": "broadcast", "data": n}, req_id=f"b{n}")

        thread = threading.Thread(target=burst)
        thread.start()
        request(sub, SUBSCRIBE, {"topic": "broadcast"}, req_id="sub")
        answer = sub.receive_json()
        thread.join()
        answers = [pub.receive_json() for _ in range(total)]
        last = max(seq(a["data"]["offset"]) for a in answers)
        start = seq(answer["data"]["offset"])
        got = [seq(m["offset"]) for m in messages(sub, last - start)]
    assert answer["req_id"] == "sub" and answer["status_code"] == 0
    assert got == list(range(start + 1, last + 1))  # every one after the answer, in order


def test_server_side_publish_outside_a_request(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        call(ws, SUBSCRIBE, {"topic": "user.alice"})
        hub = bus_client.app.state.services.hub  # type: ignore[attr-defined]
        offset = bus_client.portal.call(hub.publish, "user.alice", {"note": "from a task"})
        event = ws.receive_json()
    assert event == {
        "event": "message",
        "topic": "user.alice",
        "offset": str(offset),
        "data": {"note": "from a task"},
    }


def test_subscribe_frames_are_valid_json(bus_client: TestClient, tokens: dict[str, str]) -> None:
    weird = {"quote": '"', "uni": "ünï 💥", "nested": [None, True, 1.5]}
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as pub,
    ):
        call(ws, SUBSCRIBE, {"topic": "chat.json"})
        call(pub, PUBLISH, {"topic": "chat.json", "data": weird})
        raw = ws.receive_text()
    assert json.loads(raw)["data"] == weird


def test_resume_after_more_than_a_queue_of_events(
    tmp_path: Path, bus: Settings, tokens: dict[str, str]
) -> None:
    """History replayed on subscribe is bounded by retention, not by the send queue."""
    settings = bus.replace(send_queue=64, stream_retention=1000)
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
        client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as sub,
    ):
        since = call(sub, SUBSCRIBE, {"topic": "broadcast"})["data"]["offset"]
        call(sub, UNSUBSCRIBE, {"topic": "broadcast"})
        for n in range(300):
            call(pub, PUBLISH, {"topic": "broadcast", "data": n}, req_id=f"p{n}")
        answer = call(sub, SUBSCRIBE, {"topic": "broadcast", "since": since}, req_id="again")
        assert answer["status_code"] == 0 and answer["data"]["recovered"] is True
        assert [m["data"] for m in messages(sub, 300)] == list(range(300))


def test_unsubscribe_while_subscribing_leaves_no_ghost(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
    ):
        request(ws, SUBSCRIBE, {"topic": "chat.flicker"}, req_id="s")
        request(ws, UNSUBSCRIBE, {"topic": "chat.flicker"}, req_id="u")
        answers = {a["req_id"]: a for a in (ws.receive_json(), ws.receive_json())}
        assert answers["u"]["status_code"] == 0
        assert answers["s"]["status_code"] in (0, 8)  # 8: unsubscribed meanwhile
        call(pub, PUBLISH, {"topic": "chat.flicker", "data": "late"}, req_id="late")
        assert call(ws, ECHO, {"n": 1})["data"] == {"n": 1}  # no message came first
        presence = call(pub, PRESENCE, {"topic": "chat.flicker"})["data"]["presence"]
        assert presence == []


# -- resuming a long history at the default send queue, on a real server ----------------


def _client_frame(message: dict[str, Any]) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, json.dumps(message).encode()).serialize(mask=True)


async def _publish_history(address: str, root: str, count: int) -> tuple[str, list[int]]:
    """`count` events on `broadcast`, published concurrently; returns the first offset
    and the data in stream order (on Redis concurrent publishes land in any order)."""
    from tests.helpers import ws_connect

    pub = await ws_connect(address, additional_headers=auth_header(root))
    for n in range(count):
        await pub.send(json.dumps(_publish(n, f"p{n}")))
    answers = [json.loads(await pub.recv()) for _ in range(count)]
    await pub.close()
    placed = sorted((seq(a["data"]["offset"]), a["data"]["offset"], a["req_id"]) for a in answers)
    return placed[0][1], [int(req_id[1:]) for _, _, req_id in placed]


def _publish(data: Any, req_id: str) -> dict[str, Any]:
    return {"pkg_id": PUBLISH, "req_id": req_id, "data": {"topic": "broadcast", "data": data}}


@pytest.mark.anyio
async def test_a_pipelined_resume_of_more_than_a_send_queue_is_answered_in_full(
    bus: Settings, tokens: dict[str, str]
) -> None:
    """15 calls, a subscribe 299 events back and 16 more calls in one TCP write, with the
    default send queue (256): the answers to the frames around it wait for the writer,
    and the 299 replayed events behind the subscribe answer must not count as a peer that
    does not read (1013)."""
    import asyncio
    import socket

    from tests.conftest import serve

    with serve(build_app(bus.replace(send_queue=256))) as address:
        first, stream = await _publish_history(address, tokens["root"], 300)
        host, port = address.split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + f"Authorization: Bearer {tokens['alice']}\r\n\r\n".encode()
        )
        await asyncio.sleep(0.3)  # the handshake is done
        burst = [{"pkg_id": ECHO, "req_id": f"a{i}", "data": {"i": i}} for i in range(15)]
        subscribe = {"topic": "broadcast", "since": first}
        burst.append({"pkg_id": SUBSCRIBE, "req_id": "s", "data": subscribe})
        burst += [{"pkg_id": ECHO, "req_id": f"b{i}", "data": {"i": i}} for i in range(16)]
        sock.sendall(b"".join(_client_frame(m) for m in burst))
        sock.settimeout(1.0)
        data = b""
        with contextlib.suppress(TimeoutError):
            while chunk := await asyncio.to_thread(sock.recv, 1 << 20):
                data += chunk
        sock.close()
    frames = server_frames(data)
    assert [opcode for opcode, _ in frames if opcode != "TEXT"] == []  # no close at all
    texts = [json.loads(payload) for _, payload in frames]
    answers = {m["req_id"]: m for m in texts if "req_id" in m}
    assert sorted(answers) == sorted(m["req_id"] for m in burst)
    assert all(answer["status_code"] == 0 for answer in answers.values())
    events = [m["data"] for m in texts if m.get("event") == "message"]
    assert events == stream[1:]  # what followed `since`, in the stream's order
    assert texts.index(answers["s"]) < texts.index(next(m for m in texts if "event" in m))


@pytest.mark.anyio
async def test_resuming_while_the_topic_is_busy_is_not_a_slow_consumer(
    bus: Settings, tokens: dict[str, str]
) -> None:
    """A subscriber resumes 299 events back while another client keeps publishing: it
    gets the history, then every live event, in order, and is not closed."""
    import asyncio

    from tests.conftest import serve
    from tests.helpers import ws_connect

    with serve(build_app(bus.replace(send_queue=256))) as address:
        first, stream = await _publish_history(address, tokens["root"], 300)
        pub = await ws_connect(address, additional_headers=auth_header(tokens["root"]))
        sub = await ws_connect(address, additional_headers=auth_header(tokens["alice"]))
        subscribe = {"topic": "broadcast", "since": first}
        await sub.send(json.dumps({"pkg_id": SUBSCRIBE, "req_id": "s", "data": subscribe}))
        for i in range(200):  # publishes racing the subscribe and its replay
            await pub.send(json.dumps(_publish(f"q{i}", f"q{i}")))
            await asyncio.sleep(0.0005)
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len([m for m in received if m.get("event") == "message"]) < 499:
                received.append(json.loads(await sub.recv()))
        await pub.close()
        await sub.close()
    assert received[0]["req_id"] == "s" and received[0]["status_code"] == 0
    events = [m for m in received if m.get("event") == "message"]
    assert [e["data"] for e in events[:299]] == stream[1:]
    # the live ones, published concurrently, in whatever order the bus took them
    assert sorted(e["data"] for e in events[299:]) == sorted(f"q{i}" for i in range(200))
    assert [seq(e["offset"]) for e in events] == list(range(seq(first) + 1, seq(first) + 500))

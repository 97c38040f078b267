"""Server-side subscriptions on the in-process bus and on Redis (fixture `bus`): every
socket's personal channel (`user.<tenant>.<sub>`, `publish_user`, resume at connect, no stranger's
access, no unsubscribe), connect hooks, and nothing left once the sockets closed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app
from tests.connect_hooks import HOOKED
from tests.helpers import auth_header, call

SUBSCRIBE, UNSUBSCRIBE, PUBLISH, PRESENCE, HISTORY, CHANNELS, ECHO = 30, 31, 32, 33, 34, 35, 40
JOBS_START, JOBS_CANCEL, JOBS_WATCH = 20, 22, 23


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "carl": issuer.mint("carl", ["user"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "namesake": issuer.mint("alice", ["user"], tenant="globex"),  # another caller
        HOOKED: issuer.mint(HOOKED, ["user"], tenant="acme"),
    }


@pytest.fixture
def hooked_client(bus: Settings) -> Iterator[TestClient]:
    settings = bus.replace(handlers=(*bus.handlers, "tests.connect_hooks"))
    with TestClient(build_app(settings)) as client:
        yield client


def publish_user(client: TestClient, sub: str, event: str, data: Any, tenant: str = "acme") -> str:
    """What a handler or a job does: `services.hub.publish_user`, in the app's loop."""
    hub = client.app.state.services.hub  # type: ignore[attr-defined]
    assert client.portal is not None
    send = functools.partial(hub.publish_user, sub, event, data, tenant=tenant)
    return str(client.portal.call(send))


def channels(ws: WebSocketTestSession) -> list[dict[str, str]]:
    """The socket's server-side subscriptions; answered once they are all made (a socket's
    frames are served only then)."""
    answer = call(ws, CHANNELS, {}, req_id="channels")
    assert answer["status_code"] == 0, answer
    return list(answer["data"]["channels"])


def test_publish_user_reaches_every_socket_of_the_user_and_nobody_else(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as one,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as two,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as carl,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["namesake"])) as other,
    ):
        [mine] = channels(one)
        assert [c["topic"] for c in channels(other)] == ["user.globex.alice"]
        assert mine["topic"] == "user.acme.alice" and mine == channels(two)[0]
        assert [c["topic"] for c in channels(carl)] == ["user.acme.carl"]
        offset = publish_user(bus_client, "alice", "project.shared", {"project": 7})
        got = [one.receive_json(), two.receive_json()]
        assert call(carl, ECHO, {"x": 1})["data"] == {"x": 1}  # nothing reached carl
        assert call(other, ECHO, {"x": 1})["data"] == {"x": 1}  # nor alice of globex
    expected = {
        "event": "project.shared",
        "topic": "user.acme.alice",
        "offset": offset,
        "data": {"project": 7},
    }
    assert got == [expected, expected]
    assert int(offset.rsplit(":", 1)[1]) == int(mine["offset"].rsplit(":", 1)[1]) + 1


def test_a_reconnect_with_the_last_offset_gets_the_missed_events_once(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    headers = auth_header(tokens["alice"])
    with bus_client.websocket_connect("/ws", headers=headers) as ws:
        last = channels(ws)[0]["offset"]
    missed = [publish_user(bus_client, "alice", "note", {"n": n}) for n in range(3)]
    with bus_client.websocket_connect(f"/ws?since.user.acme.alice={last}", headers=headers) as ws:
        replayed = [ws.receive_json() for _ in range(3)]
        assert channels(ws) == [{"topic": "user.acme.alice", "offset": missed[-1]}]  # no more
        live = publish_user(bus_client, "alice", "note", {"n": 3})
        assert ws.receive_json()["offset"] == live
    assert [(m["offset"], m["data"]) for m in replayed] == [
        (offset, {"n": n}) for n, offset in enumerate(missed)
    ]
    # without `since`, or with one that cannot be resumed, nothing is replayed
    with bus_client.websocket_connect("/ws?since.user.acme.alice=x:1", headers=headers) as ws:
        assert channels(ws) == [{"topic": "user.acme.alice", "offset": live}]


def test_strangers_cannot_use_another_users_channel(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as ws:
        for pkg_id, data in [
            (SUBSCRIBE, {"topic": "user.acme.alice"}),
            (SUBSCRIBE, {"topic": "user.acme.alice", "since": "x:0"}),
            (PUBLISH, {"topic": "user.acme.alice", "data": 1}),
            (PUBLISH, {"topic": "user.globex.bob", "data": 1}),  # nor on his own: server only
            (PRESENCE, {"topic": "user.acme.alice"}),
            (HISTORY, {"topic": "user.acme.alice"}),
        ]:
            assert call(ws, pkg_id, data)["status_code"] == 3, (pkg_id, data)
    # bob's socket was not given alice's channel either
    with bus_client.websocket_connect(
        "/ws?since.user.acme.alice=x:0", headers=auth_header(tokens["bob"])
    ) as ws:
        assert [c["topic"] for c in channels(ws)] == ["user.globex.bob"]
        publish_user(bus_client, "alice", "note", {})
        assert call(ws, ECHO, {})["status_code"] == 0  # the answer, no event before it


def test_the_personal_channel_cannot_be_unsubscribed_but_resumes(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        start = channels(ws)[0]["offset"]
        refused = call(ws, UNSUBSCRIBE, {"topic": "user.acme.alice"})
        assert refused["status_code"] == 3
        assert refused["error"]["message"] == (
            "topic 'user.acme.alice' is subscribed by the server until the socket closes"
        )
        first = publish_user(bus_client, "alice", "note", {"n": 1})
        assert ws.receive_json()["offset"] == first  # still delivered
        # subscribing again with `since` replays on this socket; it stays the server's
        again = call(ws, SUBSCRIBE, {"topic": "user.acme.alice", "since": start})
        assert again["data"] == {"topic": "user.acme.alice", "offset": first, "recovered": True}
        assert ws.receive_json()["offset"] == first
        assert call(ws, UNSUBSCRIBE, {"topic": "user.acme.alice"})["status_code"] == 3


def test_every_subscription_is_released_when_the_socket_closes(
    hooked_client: TestClient, tokens: dict[str, str]
) -> None:
    hub = hooked_client.app.state.services.hub  # type: ignore[attr-defined]
    assert hooked_client.portal is not None
    portal = hooked_client.portal
    with hooked_client.websocket_connect("/ws", headers=auth_header(tokens[HOOKED])) as ws:
        assert [c["topic"] for c in channels(ws)] == ["projects.acme", "user.acme.hooked"]
        call(ws, SUBSCRIBE, {"topic": "chat.room"})
        for topic in ("projects.acme", "user.acme.hooked", "chat.room"):
            assert [p["sub"] for p in portal.call(hub.presence, topic)] == [HOOKED]
    deadline = time.monotonic() + 10
    left: list[Any] = ["?"]
    while left and time.monotonic() < deadline:  # the presence entries go in the background
        left = [
            portal.call(hub.presence, t) for t in ("projects.acme", "user.acme.hooked", "chat.room")
        ]
        left = [entry for entries in left for entry in entries]
        time.sleep(0.05)
    assert left == []
    assert hub._subs == {}  # and this node reads no stream for it any more


def test_connect_hooks_subscribe_and_a_failing_hook_costs_only_its_topics(
    hooked_client: TestClient, tokens: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "realtime.channels")
    with (
        hooked_client.websocket_connect("/ws", headers=auth_header(tokens[HOOKED])) as ws,
        hooked_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as alice,
    ):
        # the roles allow projects.acme; projects.globex (another tenant), `unlisted` (no
        # pattern) and project.999999 (the authorizer: not found) are left out
        assert [c["topic"] for c in channels(ws)] == ["projects.acme", "user.acme.hooked"]
        assert [c["topic"] for c in channels(alice)] == ["user.acme.alice"]  # hooks: none for her
        created = hooked_client.post(
            "/projects", json={"name": "p"}, headers=auth_header(tokens["alice"])
        ).json()
        event = ws.receive_json()
        assert (event["topic"], event["data"]) == (
            "projects.acme",
            {"op": "created", "project": created},
        )
        refused = call(ws, UNSUBSCRIBE, {"topic": "projects.acme"})
        assert refused["status_code"] == 3  # the server's own, as the personal channel
        assert call(ws, ECHO, {"alive": 1})["data"] == {"alive": 1}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "connect hook tests.connect_hooks.failing failed for hooked" in logged
    for topic in ("projects.globex", "unlisted", "project.999999"):
        assert f"not subscribed to {topic!r}" in logged


def test_job_done_reaches_the_owners_personal_channel(
    client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as starter,
        client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as other_tab,
        client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as watcher,
        client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as carl,
    ):
        for ws in (starter, other_tab, watcher, carl):
            channels(ws)
        started = call(starter, JOBS_START, {"total_steps": 1, "step_seconds": 0.2})
        job = started["data"]["job_id"]
        assert call(watcher, JOBS_WATCH, {"job_id": job})["status_code"] == 0
        done = [starter.receive_json(), other_tab.receive_json()]  # no watch was asked
        watched = [watcher.receive_json(), watcher.receive_json()]
        for ws in (carl, watcher):  # the watcher was told once, on the job's topic
            assert call(ws, ECHO, {})["status_code"] == 0
    outcome = {"job_id": job, "state": "SUCCESS", "result": {"steps": 1}}
    for event in done:
        assert event["event"] == "job.done" and event["topic"] == "user.acme.alice"
        assert event["data"] == outcome
    assert [(e["event"], e["topic"]) for e in watched] == [
        ("job.progress", f"job:{job}"),
        ("job.done", f"job:{job}"),
    ]
    assert watched[-1]["data"] == outcome

"""`broadcast` reaches every tenant's users: who is subscribed there is not for one
tenant's users to list (it named the users of every other tenant)."""

from __future__ import annotations

from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app
from tests.helpers import auth_header, call

SUBSCRIBE, PRESENCE = 30, 33


def test_broadcast_presence_is_the_operators_alone(settings: Settings, issuer: DevIssuer) -> None:
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    bob = auth_header(issuer.mint("bob", ["user"], tenant="globex"))
    operator = auth_header(issuer.mint("ops", ["user", "operator"], tenant="ops"))
    with (
        TestClient(build_app(settings)) as client,
        client.websocket_connect("/ws", headers=alice) as a,
        client.websocket_connect("/ws", headers=bob) as b,
        client.websocket_connect("/ws", headers=operator) as o,
    ):
        for ws in (a, b):
            assert call(ws, SUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0
            assert (
                call(
                    ws, SUBSCRIBE, {"topic": "broadcast." + ("acme" if ws is a else "globex")}, "t"
                )["status_code"]
                == 0
            )
        denied = call(a, PRESENCE, {"topic": "broadcast"})
        assert denied["status_code"] == 3
        assert denied["error"]["message"] == "you may not presence on topic 'broadcast'"
        seen = call(o, PRESENCE, {"topic": "broadcast"})["data"]["presence"]
        assert [p["sub"] for p in seen] == ["alice", "bob"]
        # each tenant still sees its own on its own topic, and nobody else's
        own = call(a, PRESENCE, {"topic": "broadcast.acme"}, "own")["data"]["presence"]
        assert [p["sub"] for p in own] == ["alice"]
        assert call(a, PRESENCE, {"topic": "broadcast.globex"}, "other")["status_code"] == 3

"""The bus metrics move as an operator reads them: deliveries per socket reached, the lag
once per publication, replays on a resume, `recovered: false` answers, subscriptions
open, and the bus's failed calls; on the in-process bus and on real Redis (`bus`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import build_app, make_settings, redis_url
from tests.helpers import auth_header, call, request
from tests.proxy import running_proxy

SUBSCRIBE, UNSUBSCRIBE, PUBLISH = 30, 31, 32


def sample(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample of the app's /metrics (0 when it has none yet)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "carl": issuer.mint("carl", ["user"], tenant="acme"),
        "root": issuer.mint("root", ["user", "operator"], tenant="acme"),
    }


def test_a_publication_to_two_subscribers_is_two_deliveries_and_one_lag(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as one,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as two,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
    ):
        for ws in (one, two):
            assert call(ws, SUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0
        # three sockets, each on its personal channel; two on broadcast
        assert sample(bus_client, "realtime_subscriptions", kind="topic") == 2
        assert sample(bus_client, "realtime_subscriptions", kind="personal") == 3
        answer = call(pub, PUBLISH, {"topic": "broadcast", "data": {"n": 1}})
        assert answer["status_code"] == 0
        assert [ws.receive_json()["data"] for ws in (one, two)] == [{"n": 1}, {"n": 1}]
        assert sample(bus_client, "realtime_bus_publications_total", kind="topic") == 1
        assert sample(bus_client, "realtime_bus_deliveries_total", kind="topic") == 2
        # the lag is observed once per publication on this node, not once per socket
        assert sample(bus_client, "realtime_bus_lag_seconds_count", kind="topic") == 1
        lag = sample(bus_client, "realtime_bus_lag_seconds_sum", kind="topic")
        assert 0 <= lag < 10  # a real duration in seconds, not a timestamp
        assert call(one, UNSUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0
        assert sample(bus_client, "realtime_subscriptions", kind="topic") == 1
    assert sample(bus_client, "realtime_subscriptions", kind="topic") == 0
    assert sample(bus_client, "realtime_subscriptions", kind="personal") == 0
    assert sample(bus_client, "realtime_bus_replayed_total", kind="topic") == 0


def test_a_resume_with_since_counts_its_replays_not_as_deliveries(
    bus_client: TestClient, tokens: dict[str, str]
) -> None:
    with (
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
        bus_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws,
    ):
        before = call(ws, SUBSCRIBE, {"topic": "broadcast"})["data"]["offset"]
        assert call(ws, UNSUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0
        for n in range(3):
            assert call(pub, PUBLISH, {"topic": "broadcast", "data": n})["status_code"] == 0
        answer = call(ws, SUBSCRIBE, {"topic": "broadcast", "since": before})
        assert answer["data"]["recovered"] is True
        assert [ws.receive_json()["data"] for _ in range(3)] == [0, 1, 2]
        assert sample(bus_client, "realtime_bus_replayed_total", kind="topic") == 3
        assert sample(bus_client, "realtime_bus_deliveries_total", kind="topic") == 0
        assert sample(bus_client, "realtime_bus_unrecovered_total", at="subscribe") == 0


def test_a_since_past_the_retained_history_counts_recovered_false(
    bus: Settings, tokens: dict[str, str]
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
        fresh = call(ws, SUBSCRIBE, {"topic": "broadcast"})  # no since: nothing to recover
        assert fresh["data"]["recovered"] is False
        assert sample(client, "realtime_bus_unrecovered_total", at="subscribe") == 0
        answer = call(ws, SUBSCRIBE, {"topic": "broadcast", "since": first})
        assert answer["data"]["recovered"] is False
        assert sample(client, "realtime_bus_unrecovered_total", at="subscribe") == 1
        assert sample(client, "realtime_bus_replayed_total", kind="topic") == 0
        assert sample(client, "realtime_bus_publications_total", kind="topic") == 300


def test_a_bus_call_that_fails_is_counted_by_operation(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    with running_proxy(redis_url()) as proxy:
        settings = make_settings(tmp_path, redis_url=proxy.url(redis_url()), redis_timeout=1.0)
        with (
            TestClient(build_app(settings)) as client,
            client.websocket_connect("/ws", headers=auth_header(tokens["root"])) as pub,
        ):
            ok = call(pub, PUBLISH, {"topic": "broadcast", "data": 1})
            assert ok["status_code"] == 0
            assert sample(client, "realtime_bus_errors_total", operation="publish") == 0
            proxy.cut()  # Redis is down: connections dropped, new ones refused
            failed = call(pub, PUBLISH, {"topic": "broadcast", "data": 2}, req_id="down")
            # TIMEOUT (the connection dropped under the sent command: maybe published) or
            # UNAVAILABLE (not sent): either way one failed publish
            assert failed["status_code"] in (7, 9), failed
            assert sample(client, "realtime_bus_errors_total", operation="publish") == 1
            assert sample(client, "realtime_bus_publications_total", kind="topic") == 1
            proxy.restore()

"""The per-request tallies folded into prometheus-client's multiprocess files expose what
the in-process collector exposes (realtime.metrics._Folded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from starlette.testclient import TestClient

from tests.helpers import auth_header, call

RECORD = """
import sys
from realtime.metrics import Metrics
metrics = Metrics()
for seconds in (0.0001, 0.003, 0.003, 0.2, 20.0):
    metrics.requests.record("echo", "OK", "ws", seconds)
metrics.fold()  # folding twice adds nothing twice
metrics.requests.record("echo", "NOT_FOUND", "rest", 0.04)
bus = metrics.bus
bus.published["topic"] += 2
bus.delivered["topic"] += 2000
bus.subscriptions["personal"] = 7
for seconds in (0.0002, 0.004, 30.0):
    bus.lag["job"].observe(seconds)
metrics.fold()
bus.delivered["topic"] += 1000
bus.unrecovered["subscribe"] += 1
bus.subscriptions["personal"] -= 2
sys.stdout.write(metrics.render().decode())
"""


def _exposition(multiprocess_dir: Path | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
    done = subprocess.run(
        [sys.executable, "-c", RECORD], env=env, capture_output=True, text=True, check=True
    )
    wanted = (
        "realtime_requests_total{",
        "realtime_request_seconds_",
        "realtime_bus_",
        "realtime_subscriptions{",
    )
    return sorted(line for line in done.stdout.splitlines() if line.startswith(wanted))


def test_the_folded_exposition_is_the_in_process_one(tmp_path: Path) -> None:
    alone = _exposition(None)
    folded = _exposition(tmp_path)
    assert 'realtime_requests_total{package="echo",status="OK",transport="ws"} 5.0' in alone
    assert 'realtime_request_seconds_bucket{le="0.005",package="echo"} 3.0' in alone
    assert 'realtime_request_seconds_count{package="echo"} 6.0' in alone
    assert 'realtime_bus_deliveries_total{kind="topic"} 3000.0' in alone
    assert 'realtime_bus_lag_seconds_bucket{kind="job",le="0.005"} 2.0' in alone
    assert 'realtime_bus_lag_seconds_count{kind="job"} 3.0' in alone
    assert 'realtime_bus_unrecovered_total{at="subscribe"} 1.0' in alone
    assert 'realtime_subscriptions{kind="personal"} 5.0' in alone
    assert folded == alone


def _value(text: str, name: str) -> float:
    import re

    found = re.search(rf"^{name} (\S+)$", text, flags=re.M)
    assert found is not None, name
    return float(found.group(1))


def test_socket_traffic_is_counted_for_open_and_closed_sockets(
    client: TestClient, token: str
) -> None:
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        answers = [call(ws, 40, {"n": "x" * 10}, f"e{n}") for n in range(3)]
        live = client.get("/metrics").text
    sent = sum(len(json.dumps(a, separators=(",", ":"))) for a in answers)
    assert _value(live, "realtime_frames_received_total") == 3
    assert _value(live, "realtime_frames_sent_total") == 3
    assert _value(live, "realtime_sent_bytes_total") == sent
    assert _value(live, "realtime_sockets_opened_total") == 1
    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
        call(ws, 40, {}, "again")
    closed = client.get("/metrics").text  # both sockets closed: their counts stay
    assert _value(closed, "realtime_frames_received_total") == 4
    assert _value(closed, "realtime_frames_sent_total") == 4
    assert _value(closed, "realtime_sockets_opened_total") == 2

"""The shipped Grafana dashboard cannot rot: every metric its queries use is exposed by a
server or a worker, and every exposition passes `promtool check metrics`."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, flush_redis, redis_url
from tests.helpers import ws_call, ws_connect
from tests.nodes import free_port, mint, node, worker

DASHBOARD = ROOT / "deploy/grafana/dashboards/realtime.json"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
# series Prometheus itself makes (not the server's): `up` of each scrape target
PROMETHEUS_OWN = {"up"}


def queried_families() -> set[str]:
    """Every metric name in the dashboard's queries, as the family its samples belong to
    (`realtime_requests_total` is the counter `realtime_requests`)."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b([a-z_]+)(?=\{|\[|\)|\s|$)", target["expr"]):
                if name.startswith("realtime_") or name in PROMETHEUS_OWN:
                    names.add(name)
    return {_family(name) for name in names}


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exposed_families(text: str) -> set[str]:
    # the text format names a counter's family with its _total (`# TYPE x_total counter`)
    return {_family(name) for name in re.findall(r"^# TYPE (\S+) ", text, flags=re.M)}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return found


async def _traffic(address: str, token: str) -> None:
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    assert (await ws_call(ws, 40, {"x": 1}, "e"))["status_code"] == 0
    await ws.close()


def test_every_queried_metric_is_exposed_and_promtool_accepts_them(
    tmp_path: Path, pg_url: str
) -> None:
    flush_redis()
    families = queried_families()
    assert {"realtime_requests", "realtime_jobs_finished", "up"} <= families  # parsed
    port = free_port()
    env = {"REDIS_URL": redis_url(), "DATABASE_URL": pg_url, "REALTIME_JOB_QUEUE": f"q{port}"}
    with (
        node(tmp_path, "node", **env) as server,
        worker(tmp_path, "worker", REALTIME_WORKER_METRICS_PORT=str(port), **env),
    ):
        asyncio.run(_traffic(server.address, mint(tmp_path, "alice")))
        expositions = {
            "server": httpx.get(f"http://{server.address}/metrics").text,
            "worker": httpx.get(f"http://127.0.0.1:{port}/metrics").text,
        }
    exposed = set().union(*(exposed_families(text) for text in expositions.values()))
    missing = families - exposed - PROMETHEUS_OWN
    assert not missing, f"the dashboard queries metrics nobody exposes: {sorted(missing)}"
    promtool = _promtool()
    for name, text in expositions.items():
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
        assert checked.stdout.strip() == "", f"{name}: {checked.stdout}"  # no lint either


def test_the_prometheus_config_is_valid() -> None:
    checked = subprocess.run(
        [_promtool(), "check", "config", str(ROOT / "deploy/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

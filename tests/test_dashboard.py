"""The shipped Grafana dashboard cannot rot: every metric name its queries use is a sample
name a server or a worker exposes (a counter's `_total`, a histogram's `_bucket`: not just
a family), every label they filter or group by is on that metric's series,
`histogram_quantile` reads a histogram's buckets, and every exposition passes
`promtool check metrics`."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, flush_redis, redis_url
from tests.helpers import ws_call, ws_connect
from tests.nodes import free_port, mint, node, worker

DASHBOARD = ROOT / "deploy/grafana/dashboards/realtime.json"
# series Prometheus itself makes (not the server's): `up` of each scrape target
PROMETHEUS_OWN = {"up"}
# labels Prometheus adds to every series of a scrape target
TARGET_LABELS = {"job", "instance"}
# the sample names each type of family exposes (`x_total` is a sample of the counter x)
SAMPLES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
# families whose series exist only after a fault the test does not cause (a refused
# connection, a server close, a slow inline handler, a shared limiter failing, an
# audited call): their names are checked, not their labels
FAULTS_ONLY = {
    "realtime_http_refused",
    "realtime_socket_closes",
    "realtime_inline_overruns",
    "realtime_audit_rows",
}
QUERY_NAME = re.compile(r"\b([a-z_]+)(?=\{|\[|\)|\s|$)")
MATCHERS = re.compile(r"\{([^}]*)\}")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
QUANTILE = re.compile(r"histogram_quantile\(\s*[\d.]+\s*,(.*)\)", re.S)


@dataclass
class Family:
    type: str
    labels: set[str] = field(default_factory=set)  # of the samples exposed
    sampled: bool = False

    def sample_names(self, name: str) -> set[str]:
        return {name + suffix for suffix in SAMPLES.get(self.type, ("",))}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def queried(expr: str) -> set[str]:
    """The metric names an expression reads (ours and Prometheus's own)."""
    names = set(QUERY_NAME.findall(expr))
    return {name for name in names if name.startswith("realtime_") or name in PROMETHEUS_OWN}


def labels_used(expr: str) -> set[str]:
    used = set()
    for matchers in MATCHERS.findall(expr):
        used |= {m.split("=")[0].rstrip("!~ ").strip() for m in matchers.split(",") if m.strip()}
    for grouping in GROUPING.findall(expr):
        used |= {label.strip() for label in grouping.split(",") if label.strip()}
    return used


def exposed(texts: list[str]) -> dict[str, Family]:
    """Every family of the expositions, by name, with the labels its samples carry."""
    families: dict[str, Family] = {}
    for text in texts:
        for metric in text_string_to_metric_families(text):
            family = families.setdefault(metric.name, Family(metric.type))
            for sample in metric.samples:
                family.sampled = True
                family.labels |= set(sample.labels)
    return families


def owner(name: str, families: dict[str, Family]) -> tuple[str, Family] | None:
    """The exposed family a sample name belongs to, if any."""
    for family_name, family in families.items():
        if name in family.sample_names(family_name):
            return family_name, family
    return None


def problems(expr: str, families: dict[str, Family]) -> list[str]:
    """What is wrong with one query against what the processes expose."""
    found = []
    for name in sorted(queried(expr) - PROMETHEUS_OWN):
        owned = owner(name, families)
        if owned is None:
            found.append(f"{name}: exposed by no server or worker (as a sample name)")
            continue
        family_name, family = owned
        if family.sampled and family_name not in FAULTS_ONLY:
            unknown = labels_used(expr) - family.labels - TARGET_LABELS
            if unknown:
                found.append(f"{name}: no series has the label(s) {sorted(unknown)}")
    for argument in QUANTILE.findall(expr):
        for name in queried(argument):
            owned = owner(name, families)
            if not (name.endswith("_bucket") and owned and owned[1].type == "histogram"):
                found.append(f"histogram_quantile over {name}: not a histogram's _bucket")
    return found


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    return found


async def _traffic(address: str, token: str) -> None:
    """An echo, a subscription, and a job run by the worker to its end."""
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    assert (await ws_call(ws, 40, {"x": 1}, "e"))["status_code"] == 0
    assert (await ws_call(ws, 30, {"topic": "broadcast"}, "s"))["status_code"] == 0
    started = await ws_call(ws, 20, {"total_steps": 2, "step_seconds": 0.01}, "j")
    assert started["status_code"] == 0, started
    async with asyncio.timeout(30):
        while True:  # the job's job.done, on the owner's personal channel
            frame = json.loads(await ws.recv())
            if frame.get("event") == "job.done":
                assert frame["data"]["state"] == "SUCCESS", frame
                break
    await ws.close()


def _expositions(tmp_path: Path, pg_url: str) -> dict[str, str]:
    flush_redis()
    port = free_port()
    env = {"REDIS_URL": redis_url(), "DATABASE_URL": pg_url, "REALTIME_JOB_QUEUE": f"q{port}"}
    with (
        node(tmp_path, "node", **env) as server,
        worker(tmp_path, "worker", REALTIME_WORKER_METRICS_PORT=str(port), **env),
    ):
        asyncio.run(_traffic(server.address, mint(tmp_path, "alice")))
        return {
            "server": httpx.get(f"http://{server.address}/metrics").text,
            "worker": _after_the_run(f"http://127.0.0.1:{port}/metrics"),
        }


def _after_the_run(url: str) -> str:
    """The worker's exposition once taskiq saw the job's run return (after its last
    publication's answer: the owner may get job.done a moment before that)."""
    done = 'realtime_jobs_finished_total{outcome="ok",task="long_running_task"}'
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(url).text
        if _samples(text).get(done) == 1:
            return text
        assert time.monotonic() < deadline, f"the worker never counted the run:\n{text}"
        time.sleep(0.05)


def test_every_query_reads_exposed_series_and_promtool_accepts_them(
    tmp_path: Path, pg_url: str
) -> None:
    exprs = expressions()
    names = set().union(*(queried(expr) for expr in exprs))
    assert {"realtime_requests_total", "realtime_bus_lag_seconds_bucket", "up"} <= names
    expositions = _expositions(tmp_path, pg_url)
    families = exposed(list(expositions.values()))
    found = [problem for expr in exprs for problem in problems(expr, families)]
    assert not found, "the dashboard's queries do not match the metrics:\n" + "\n".join(found)
    # the label check ran on (nearly) every family the dashboard reads
    owned = [owner(name, families) for name in names - PROMETHEUS_OWN]
    unsampled = {found[0] for found in owned if found and not found[1].sampled} - FAULTS_ONLY
    assert not unsampled, f"no series after the test's traffic: {sorted(unsampled)}"
    # the job ran on the worker: it counted the run, its end and its publications; the
    # server delivered the one job.done its owner's socket got (on the personal channel)
    worker_saw, server_saw = (_samples(expositions[name]) for name in ("worker", "server"))
    assert worker_saw['realtime_jobs_ended_total{state="SUCCESS"}'] == 1
    assert worker_saw['realtime_job_attempts_count{state="SUCCESS"}'] == 1
    assert worker_saw['realtime_bus_publications_total{kind="job"}'] == 3  # 2 steps, done
    assert worker_saw['realtime_bus_publications_total{kind="personal"}'] == 1
    assert server_saw['realtime_bus_deliveries_total{kind="personal"}'] == 1
    promtool = _promtool()
    for name, text in expositions.items():
        checked = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"
        assert checked.stdout.strip() == "", f"{name}: {checked.stdout}"  # no lint either


def _samples(text: str) -> dict[str, float]:
    """`name{label="value",...}` (labels sorted) -> value, for every sample."""
    found = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def test_the_checks_catch_a_rotten_query() -> None:
    families = {
        "realtime_requests": Family("counter", {"package", "status"}, sampled=True),
        "realtime_request_seconds": Family("histogram", {"package", "le"}, sampled=True),
    }
    good = (
        "histogram_quantile(0.99, sum by (le, package) (rate(realtime_request_seconds_bucket[5m])))"
    )
    assert problems(good, families) == []
    assert problems('sum(rate(realtime_requests_total{status="OK"}[1m]))', families) == []
    rotten = {
        "sum(rate(realtime_gone_total[1m]))": "exposed by no server",
        "sum(rate(realtime_requests_bucket[1m]))": "exposed by no server",
        "sum by (topic) (rate(realtime_requests_total[1m]))": "label(s) ['topic']",
        "histogram_quantile(0.9, sum by (le) (rate(realtime_requests_total[5m])))": "not a hist",
    }
    for expr, problem in rotten.items():
        assert any(problem in found for found in problems(expr, families)), expr


def test_the_prometheus_config_is_valid() -> None:
    checked = subprocess.run(
        [_promtool(), "check", "config", str(ROOT / "deploy/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

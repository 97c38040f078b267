"""The browser's door: CORS on REST from ALLOWED_ORIGINS, /docs without a CDN, the AsyncAPI
document (checked by @asyncapi/parser) and the generated client types (checked by tsc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.web import STATIC
from tests.conftest import ROOT, build_app, make_settings
from tests.npmtools import node_tools, run_node, run_tool

VITE = "http://localhost:5173"


def preflight(client: TestClient, origin: str) -> object:
    return client.options(
        "/projects",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


@pytest.fixture
def cors_client(tmp_path: Path) -> TestClient:
    settings = make_settings(tmp_path, allowed_origins=(VITE,), rate_limit=1.0, rate_burst=1)
    with TestClient(build_app(settings)) as client:
        yield client


def test_preflight_from_an_allowed_origin_is_answered(cors_client: TestClient) -> None:
    answer = preflight(cors_client, VITE)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == VITE
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    # bearer tokens, never cookies
    assert "access-control-allow-credentials" not in answer.headers


def test_preflight_from_another_origin_is_refused(cors_client: TestClient) -> None:
    answer = preflight(cors_client, "http://evil.example")
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers


def test_cross_origin_answers_expose_retry_after(cors_client: TestClient, tmp_path: Path) -> None:
    issuer = DevIssuer.load_or_create(
        str(tmp_path / "dev-key.json"), audience="realtime", client_id="realtime"
    )
    headers = {"Origin": VITE, "Authorization": f"Bearer {issuer.mint('alice', ['user'])}"}
    answers = [cors_client.get("/me", headers=headers) for _ in range(3)]
    limited = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200 and limited
    assert limited[0].headers["access-control-allow-origin"] == VITE
    assert "retry-after" in limited[0].headers["access-control-expose-headers"].lower()
    assert int(limited[0].headers["retry-after"]) >= 1


def test_without_allowed_origins_no_cors_is_granted(client: TestClient) -> None:
    answer = preflight(client, VITE)
    assert "access-control-allow-origin" not in answer.headers
    assert answer.status_code == 405
    plain = client.get("/health", headers={"Origin": VITE})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_docs_are_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "http" not in page.replace("</html>", "")  # no external URL at all
    css = client.get("/docs/assets/swagger-ui.css")
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text
    assert client.get("/docs/assets/index.html").status_code == 404
    assert client.get("/docs/assets/..%2Fpyproject.toml").status_code == 404


PARSE_ASYNCAPI = """
const {Parser} = require("@asyncapi/parser");
const text = require("fs").readFileSync(process.argv[1], "utf8");
new Parser().parse(text).then(({document, diagnostics}) => {
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of errors) console.log(d.code, d.message, JSON.stringify(d.path));
  if (!document || errors.length) process.exit(1);
  console.log(JSON.stringify({
    operations: document.operations().all().map((o) => o.id()),
    channels: document.channels().all().map((c) => c.address()),
  }));
});
"""


def test_asyncapi_document_is_valid_and_complete(client: TestClient, tmp_path: Path) -> None:
    spec = client.get("/asyncapi.json").json()
    assert spec["asyncapi"] == "3.0.0"
    (tmp_path / "asyncapi.json").write_text(json.dumps(spec))
    done = run_node(PARSE_ASYNCAPI, str(tmp_path / "asyncapi.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    catalog = client.get("/packages").json()
    names = {p["name"].replace(".", "_") for p in catalog}
    assert names <= set(parsed["operations"])
    assert {"event_job_progress", "event_job_done", "event_message"} <= set(parsed["operations"])
    assert {"/ws", "projects.{tenant}", "broadcast"} <= set(parsed["channels"])
    create = spec["channels"]["socket"]["messages"]["projects_create"]["payload"]
    pkg_id = next(p["pkg_id"] for p in catalog if p["name"] == "projects.create")
    assert create["properties"]["pkg_id"] == {"const": pkg_id}
    assert create["properties"]["data"]["required"] == ["name"]


GOOD_CALLS = """
import { connect } from "./realtime.js";
import type { RealtimePackages, RealtimeEvents } from "./realtime-types";
export async function ok(): Promise<void> {
  const client = connect<RealtimePackages>("ws://localhost:8000/ws", { token: "jwt" });
  const project = await client.call("projects.create", { name: "x", description: null });
  const id: number = project.id;
  const page = await client.call("projects.list", { page: 1, per_page: 10, search: "x" });
  const total: number = page.meta.total + page.data.length + id;
  await client.call("echo", { anything: [1, 2] });
  const me = await client.call("me");
  const tenant: string = me.tenant_id;
  const done: RealtimeEvents["job.done"]["data"]["state"] = "SUCCESS";
  void total; void done; void tenant;
}
"""
WRONG_FIELD = GOOD_CALLS.replace('{ name: "x", description: null }', '{ nam: "x" }')
WRONG_TYPE = GOOD_CALLS.replace("per_page: 10", 'per_page: "10"')
MISSING = GOOD_CALLS.replace(
    'client.call("projects.create", { name: "x", description: null })',
    'client.call("projects.create")',
)
UNKNOWN = GOOD_CALLS.replace('client.call("echo"', 'client.call("ecko"')


def _types(tmp_path: Path) -> None:
    json2ts = str(node_tools() / ".bin" / "json2ts")
    out = tmp_path / "realtime-types.d.ts"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "realtime.cli",
            "client-types",
            "--json2ts",
            json2ts,
            "-o",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def _tsc(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Compile `source` beside the served client's declarations and the generated types."""
    for name in ("realtime.js", "realtime.d.ts"):
        (tmp_path / name).write_bytes((STATIC / name).read_bytes())
    (tmp_path / "calls.ts").write_text(source)
    return run_tool("tsc", "--noEmit", "--strict", "--target", "es2020", "calls.ts", cwd=tmp_path)


def test_client_types_compile_and_bite(tmp_path: Path) -> None:
    _types(tmp_path)
    good = _tsc(tmp_path, GOOD_CALLS)
    assert good.returncode == 0, good.stdout
    wrong = _tsc(tmp_path, WRONG_FIELD)
    assert wrong.returncode != 0 and "nam" in wrong.stdout
    wrong = _tsc(tmp_path, WRONG_TYPE)
    line = next(n for n, text in enumerate(WRONG_TYPE.splitlines(), 1) if 'per_page: "10"' in text)
    assert wrong.returncode != 0 and f"calls.ts({line}," in wrong.stdout, wrong.stdout
    for source in (MISSING, UNKNOWN):
        assert _tsc(tmp_path, source).returncode != 0, source


def test_the_client_and_the_demo_page_are_served(client: TestClient) -> None:
    module = client.get("/client/realtime.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert "export function connect" in module.text
    types = client.get("/client/realtime.d.ts")
    assert types.status_code == 200 and "export declare function connect" in types.text
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/client/demo.js">' in page.text
    assert "http" not in client.get("/client/demo.js").text.replace("https:", "")
    for missing in ("/client/demo.html", "/client/..%2F__init__.py", "/client/nothing.js"):
        assert client.get(missing).status_code == 404

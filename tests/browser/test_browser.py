"""realtime.js and the demo page in real Chromium: live lists across tabs, a job's progress
bar, resume across a server restart, token refresh past the first token's exp, and the
Origin/CORS rules for a page on another origin."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime.web import STATIC
from tests.conftest import build_app, flush_redis, make_settings, redis_url, serve
from tests.nodes import free_port, mint, process

pytestmark = pytest.mark.slow
TIMEOUT = 15_000  # ms, for Playwright's waits


def wait_until(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sign_in(page: Any, address: str, user: str) -> None:
    page.goto(f"http://{address}/")
    page.fill("#username", user)
    page.fill("#password", user)
    page.click("#login-button")
    page.wait_for_selector("#state[data-state=open]", timeout=TIMEOUT)
    page.wait_for_selector("#app:not([hidden])", timeout=TIMEOUT)


def project_names(page: Any) -> list[str]:
    return page.eval_on_selector_all("#projects li .name", "items => items.map(i => i.textContent)")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    with serve(build_app(make_settings(tmp_path))) as address:
        yield address


def test_a_project_created_in_one_tab_appears_in_the_other(browser: Any, demo: str) -> None:
    first, second = browser.new_context(), browser.new_context()
    try:
        alice, admin = first.new_page(), second.new_page()
        sign_in(alice, demo, "alice")
        sign_in(admin, demo, "admin")  # same tenant (acme)
        alice.fill("#project-name", "alpha")
        alice.click("#create-button")
        admin.wait_for_selector("#projects li .name:text-is('alpha')", timeout=TIMEOUT)
        assert project_names(admin) == ["alpha"]

        alice.once("dialog", lambda dialog: dialog.accept("beta"))
        alice.click("#projects li:has(.name:text-is('alpha')) .rename")
        admin.wait_for_selector("#projects li .name:text-is('beta')", timeout=TIMEOUT)
        assert project_names(admin) == ["beta"]

        admin.click("#projects li:has(.name:text-is('beta')) .delete")
        alice.wait_for_function("document.querySelectorAll('#projects li').length === 0")
        assert project_names(alice) == [] and project_names(admin) == []
        # pushed presence of the tenant's topic: both users, seen from either tab, and
        # alice's leave once her tab is gone (no polling in the page)
        for page in (admin, alice):
            page.wait_for_function(
                "['admin', 'alice'].every(s => document.querySelector(`#presence li[data-sub=${s}]`))",
                timeout=TIMEOUT,
            )
        first.close()
        admin.wait_for_function(
            "!document.querySelector('#presence li[data-sub=alice]')", timeout=TIMEOUT
        )
        assert admin.eval_on_selector_all("#presence li", "l => l.map(i => i.dataset.sub)") == [
            "admin"
        ]
    finally:
        first.close()
        second.close()


def test_a_job_progress_bar_fills_with_steps_in_order(context: Any, demo: str) -> None:
    page = context.new_page()
    sign_in(page, demo, "alice")
    page.click("#start-job")
    page.wait_for_selector("#job-state:text-is('SUCCESS')", timeout=TIMEOUT)
    assert page.eval_on_selector("#job-progress", "bar => bar.value") == 100
    steps = page.eval_on_selector_all("#job-steps li", "items => items.map(i => +i.dataset.step)")
    assert steps == [1, 2, 3, 4, 5]
    assert page.get_attribute("#job-state", "data-done") == "1"  # exactly one job.done


# -- resume across a killed and restarted server -------------------------------------------

SUBSCRIBE = """async ({token}) => {
  const { connect } = await import("/client/realtime.js");
  window.received = []; window.states = []; window.resets = 0;
  const client = connect(`ws://${location.host}/ws`, { token, backoff: { base: 200, max: 1000 } });
  client.on("state", (s) => window.states.push(s.state));
  const subscription = client.subscribe("broadcast", (data) => window.received.push(data.n),
    { onReset: () => { window.resets += 1; } });
  await subscription.ready;
}"""


class Publisher:
    """Publishes {"n": 1, 2, ...} on `broadcast` as an admin, reconnecting while the server
    is down. `acked` are the n the server answered OK; `unknown` were sent on a socket that
    dropped before its answer (they may or may not have been published)."""

    def __init__(self, address: str, token: str) -> None:
        self.address, self.token = address, token
        self.acked: list[int] = []
        self.unknown: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        n = 0
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.stop.is_set():
            try:
                url = f"ws://{self.address}/ws"
                async with connect(url, additional_headers=headers, open_timeout=2) as ws:
                    while not self.stop.is_set():
                        n += 1
                        await self.publish(ws, n)
                        await asyncio.sleep(0.02)
            except Exception:  # the server is down or dropped us: try again shortly
                await asyncio.sleep(0.1)

    async def publish(self, ws: Any, n: int) -> None:
        frame = {"pkg_id": 32, "req_id": str(n), "data": {"topic": "broadcast", "data": {"n": n}}}
        try:
            await ws.send(json.dumps(frame))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except BaseException:
            self.unknown.append(n)
            raise
        if answer["status_code"] == 0:
            self.acked.append(n)
        else:
            self.unknown.append(n)


@contextlib.contextmanager
def node_on(tmp_path: Path, port: int) -> Iterator[Any]:
    args = ["serve", "--port", str(port)]
    env = {
        "REDIS_URL": redis_url(),
        "REALTIME_RATE_LIMIT": "100000",
        "REALTIME_RATE_BURST": "100000",
    }
    with process(tmp_path, "node", args, "Application startup complete", **env) as node:
        yield node


def test_a_page_resumes_every_publication_once_after_a_server_restart(
    context: Any, tmp_path: Path
) -> None:
    flush_redis()
    port = free_port()
    address = f"127.0.0.1:{port}"
    page = context.new_page()
    publisher = Publisher(address, mint(tmp_path, "root", "user,admin,operator"))
    with node_on(tmp_path, port) as node:
        page.goto(f"http://{address}/health")
        page.evaluate(SUBSCRIBE, {"token": mint(tmp_path, "alice")})
        publisher.thread.start()
        wait_until(lambda: len(page.evaluate("window.received")) >= 20, what="first messages")
        node.kill()
    before_restart = len(publisher.acked)
    time.sleep(1.0)
    with node_on(tmp_path, port):
        wait_until(
            lambda: len(publisher.acked) >= before_restart + 30, what="publishes after restart"
        )
        publisher.stop.set()
        publisher.thread.join(10)
        acked = set(publisher.acked)
        try:
            received = wait_until(
                lambda: (r := page.evaluate("window.received")) and acked <= set(r) and r,
                what="every acknowledged publication at the page",
            )
        except AssertionError:
            got = page.evaluate("window.received")
            missing = sorted(acked - set(got))
            states = page.evaluate("window.states")
            raise AssertionError(
                f"missing {missing[:20]} ({len(missing)}) of {len(acked)}; got {len(got)}, "
                f"last {got[-5:]}; states {states}; resets {page.evaluate('window.resets')}"
            ) from None
        states = page.evaluate("window.states")
    assert len(received) == len(set(received)), "a publication was delivered twice"
    assert received == sorted(received), "publications out of order"
    assert set(received) <= acked | set(publisher.unknown)
    assert "reconnecting" in states and states[-1] == "open"
    assert page.evaluate("window.resets") == 0  # resumed, not reset


# -- a short-lived token refreshed through the provider --------------------------------------


def test_a_short_token_is_refreshed_and_the_socket_outlives_it(
    context: Any, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, dev_token_ttl=6, expiry_warning=3.0, jwt_leeway=0)
    with serve(build_app(settings)) as address:
        page = context.new_page()
        sign_in(page, address, "alice")
        page.evaluate(
            "window.states = []; window.realtimeClient.on('state', s => window.states.push(s.state))"
        )
        first = page.evaluate("window.realtimeClient.call('me', {})")
        # past the first token's exp (6 s) and the second's refresh
        time.sleep(first["expires_at"] - time.time() + 3)
        me = page.evaluate("window.realtimeClient.call('me', {})")
        assert me["expires_at"] > first["expires_at"]
        assert page.evaluate("window.realtimeClient.state") == "open"
        assert page.evaluate("window.states") == []  # never dropped, never reconnected


# -- a page on another origin ------------------------------------------------------------------

CROSS_ORIGIN = """async ({server, token}) => {
  const { connect } = await import("/realtime.js");
  const result = {};
  try {
    const answer = await fetch(`http://${server}/me`, { headers: { Authorization: `Bearer ${token}` } });
    result.rest = answer.status;
  } catch (error) { result.rest = "blocked"; }
  // no packages map: a refused origin cannot read /packages either, and must still be told
  const client = connect(`ws://${server}/ws`, { token });
  result.socket = await new Promise((resolve) => {
    client.on("state", (s) => { if (s.state === "closed") resolve(s.code); });
    client.call("me", {}).then(() => resolve("open"), () => {});
  });
  client.close();
  return result;
}"""


@contextlib.contextmanager
def other_origin() -> Iterator[str]:
    """A static server on another origin (localhost:<port>) serving realtime.js."""
    handler = functools.partial(QuietHandler, directory=str(STATIC))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("allowed", [False, True])
def test_a_page_on_another_origin(context: Any, tmp_path: Path, allowed: bool) -> None:
    with other_origin() as origin:
        settings = make_settings(tmp_path, allowed_origins=(origin,) if allowed else None)
        with serve(build_app(settings)) as address:
            page = context.new_page()
            page.goto(f"{origin}/demo.css")
            token = mint(tmp_path, "alice")
            result = page.evaluate(CROSS_ORIGIN, {"server": address, "token": token})
    if allowed:
        assert result == {"rest": 200, "socket": "open"}
    else:
        assert result == {"rest": "blocked", "socket": 4403}


def test_docs_render_offline(context: Any, demo: str) -> None:
    page = context.new_page()
    external: list[str] = []
    page.on(
        "request", lambda r: None if r.url.startswith(f"http://{demo}") else external.append(r.url)
    )
    page.goto(f"http://{demo}/docs")
    page.wait_for_selector(".opblock-summary-path >> text=/projects", timeout=TIMEOUT)
    assert external == []


# -- a job watched across a server restart (Redis queue, a real worker) ---------------------

WATCH = """async ({token}) => {
  const { connect } = await import("/client/realtime.js");
  window.steps = []; window.done = null; window.states = [];
  const client = connect(`ws://${location.host}/ws`, { token, backoff: { base: 100, max: 1000 } });
  client.on("state", (s) => window.states.push(s.state));
  const { job_id } = await client.call("jobs.start", { total_steps: 8, step_seconds: 0.4 });
  client.watchJob(job_id, (p) => window.steps.push(p.step)).then((d) => { window.done = d; });
}"""


def test_a_job_watch_survives_a_server_restart(context: Any, tmp_path: Path, pg_url: str) -> None:
    import secrets

    from tests.nodes import worker

    flush_redis()
    env = {
        "REDIS_URL": redis_url(),
        "DATABASE_URL": pg_url,
        "REALTIME_JOB_QUEUE": f"jobs:{secrets.token_hex(4)}",
    }
    port = free_port()
    args = ["serve", "--port", str(port)]
    page = context.new_page()
    with worker(tmp_path, "worker", **env):
        with process(tmp_path, "node", args, "Application startup complete", **env) as node:
            page.goto(f"http://127.0.0.1:{port}/health")
            page.evaluate(WATCH, {"token": mint(tmp_path, "alice")})
            wait_until(lambda: len(page.evaluate("window.steps")) >= 2, what="the first steps")
            node.kill()  # mid-job: the worker goes on, its steps go to Redis
        time.sleep(0.5)
        with process(tmp_path, "node", args, "Application startup complete", **env):
            try:
                done = wait_until(lambda: page.evaluate("window.done"), timeout=30, what="job.done")
            except AssertionError:
                seen = page.evaluate("[window.steps, window.states]")
                raise AssertionError(f"no job.done; steps and states {seen}") from None
            steps = page.evaluate("window.steps")
            states = page.evaluate("window.states")
    assert done["state"] == "SUCCESS"
    assert steps == list(range(1, 9)), "a step lost or shown twice across the restart"
    assert "reconnecting" in states


# -- a personal channel that was quiet, resumed across a server restart ---------------------

PERSONAL = """async ({token}) => {
  const { connect } = await import("/client/realtime.js");
  window.urls = []; window.personal = []; window.states = [];
  class Recorded extends WebSocket {
    constructor(url, protocols) { super(url, protocols); window.urls.push(url); }
  }
  const client = connect(`ws://${location.host}/ws`,
    { token, WebSocket: Recorded, backoff: { base: 100, max: 1000 } });
  client.on("state", (s) => window.states.push(s.state));
  client.on("event", (e) => { if (e.event === "job.done") window.personal.push(e); });
  await client.ready();
  // answered after the client's own topics.channels, which went out first
  window.channels = await client.call("topics.channels");
}"""


def _rest(address: str, method: str, path: str, token: str, body: Any = None) -> Any:
    import urllib.request

    request = urllib.request.Request(
        f"http://{address}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_a_quiet_personal_channel_is_resumed_after_a_restart(
    context: Any, tmp_path: Path, pg_url: str
) -> None:
    """Nothing came on alice's channel before her node died, so no event told the page
    where it stood: the connect's topics.channels did, and the job.done published while
    she was away arrives after the reconnect, once."""
    import secrets

    from tests.nodes import node, worker

    flush_redis()
    env = {
        "REDIS_URL": redis_url(),
        "DATABASE_URL": pg_url,
        "REALTIME_JOB_QUEUE": f"jobs:{secrets.token_hex(4)}",
    }
    port = free_port()
    args = ["serve", "--port", str(port)]
    token = mint(tmp_path, "alice")
    page = context.new_page()
    with worker(tmp_path, "worker", **env), node(tmp_path, "other", **env) as other:
        with process(tmp_path, "node", args, "Application startup complete", **env) as first:
            page.goto(f"http://127.0.0.1:{port}/health")
            page.evaluate(PERSONAL, {"token": token})
            assert page.evaluate("window.personal") == []
            first.kill()
        job = _rest(other.address, "POST", "/jobs", token, {"total_steps": 1, "step_seconds": 0})
        wait_until(
            lambda: (
                _rest(other.address, "GET", f"/jobs/{job['job_id']}", token)["state"] == "SUCCESS"
            ),
            what="the job to finish while the page is away",
        )
        with process(tmp_path, "node", args, "Application startup complete", **env):
            got = wait_until(lambda: page.evaluate("window.personal"), what="the missed job.done")
            time.sleep(1.0)  # a second copy would come right behind the first
            got = page.evaluate("window.personal")
            urls = page.evaluate("window.urls")
    assert [e["data"]["job_id"] for e in got] == [job["job_id"]], "missed, or delivered twice"
    assert got[0]["topic"] == "user.acme.alice" and got[0]["data"]["state"] == "SUCCESS"
    assert "since.user.acme.alice=" in urls[-1], urls

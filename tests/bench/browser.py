"""The browser client in real Chromium: `python -m tests.bench.browser [--rounds 3]`.

1. Calls per second through `client.call("echo")` against a raw `WebSocket` loop sending
   the same envelope, in the same page, against the same server process (a `realtime
   serve` on the embedded default), alternating raw and client each round, at 1 and at 16
   calls in flight. Prints each run and the ratio client/raw (target: at least 0.8).
2. Restart to first resumed message: a page subscribed through node A; A is killed; a
   message is published through node B (same Redis) while A is down; A is restarted on
   the same port. Measured: from A's "startup complete" to the page receiving that
   message, with the client's backoff at its minimum step (base 100 ms). Target: under
   1 s plus that step.

Nothing here asserts a timing; it prints figures for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from tests.bench.common import machine
from tests.bench.common.figures import median, ratio
from tests.browser.conftest import FLAGS, ensure_chromium
from tests.conftest import flush_redis, redis_url
from tests.nodes import free_port, mint, node, process

CALLS = """async ({token, seconds, inflight, mode}) => {
  const url = `ws://${location.host}/ws`;
  const envelope = (id) => JSON.stringify({pkg_id: 40, req_id: id, data: {n: 1, text: "hello"}});
  let done = 0;
  const deadline = performance.now() + seconds * 1000;
  if (mode === "raw") {
    const ws = new WebSocket(url, ["realtime.v1", "bearer." + token]);
    await new Promise((ok) => ws.onopen = ok);
    const waiting = new Map();
    ws.onmessage = (e) => { const a = JSON.parse(e.data); const r = waiting.get(a.req_id);
      if (r) { waiting.delete(a.req_id); r(a); } };
    let next = 0;
    const call = () => new Promise((ok) => { const id = String(++next); waiting.set(id, ok); ws.send(envelope(id)); });
    const lane = async () => { while (performance.now() < deadline) { await call(); done++; } };
    await Promise.all(Array.from({length: inflight}, lane));
    ws.close();
  } else {
    const { connect } = await import("/client/realtime.js");
    const client = connect(url, { token });
    await client.ready();
    await client.call("echo", {n: 1, text: "hello"});
    const lane = async () => { while (performance.now() < deadline) {
      await client.call("echo", {n: 1, text: "hello"}); done++; } };
    await Promise.all(Array.from({length: inflight}, lane));
    client.close();
  }
  return done / seconds;
}"""

SUBSCRIBE = """async ({token}) => {
  const { connect } = await import("/client/realtime.js");
  window.arrivals = [];
  const client = connect(`ws://${location.host}/ws`, { token, backoff: { base: 100, max: 1000 } });
  const sub = client.subscribe("broadcast", (data) => window.arrivals.push([data.n, Date.now()]));
  await sub.ready;
}"""


class Run(NamedTuple):
    mode: str  # "raw" (the baseline) or "client"
    round: int
    rate: float  # calls per second


def _throughput(page: Any, token: str, args: argparse.Namespace) -> None:
    for inflight in (1, 16):
        runs: list[Run] = []
        for round_ in range(1, args.rounds + 1):
            for mode in ("raw", "client"):
                params = {"token": token, "seconds": args.duration, "inflight": inflight}
                runs.append(Run(mode, round_, page.evaluate(CALLS, {**params, "mode": mode})))
                print(
                    f"  round {round_} {mode:<6} {inflight:>2} in flight: "
                    f"{runs[-1].rate:9.0f} calls/s"
                )
        raw, client = (median(r.rate for r in runs if r.mode == m) for m in ("raw", "client"))
        info = ratio(runs, "client", "raw", name=lambda r: r.mode, higher=lambda r: r.rate)
        rounds = ", ".join(f"{v:.3f}" for _, v in sorted(info["per_round"].items()))
        print(
            f"{inflight:>2} in flight: raw {raw:.0f}/s, client {client:.0f}/s, "
            f"client/raw {info['ratio']:.3f} (per round {rounds})"
        )


async def _publish(address: str, token: str, n: int) -> None:
    from websockets.asyncio.client import connect

    headers = {"Authorization": f"Bearer {token}"}
    async with connect(f"ws://{address}/ws", additional_headers=headers) as ws:
        frame = {"topic": "broadcast", "data": {"n": n}}
        await ws.send(json.dumps({"pkg_id": 32, "req_id": "p", "data": frame}))
        answer = json.loads(await ws.recv())
        assert answer["status_code"] == 0, answer


def _restart(browser: Any, tmp: Path, rounds: int) -> None:
    flush_redis()
    env = {"REDIS_URL": redis_url()}
    port = free_port()
    args = ["serve", "--port", str(port)]
    admin = mint(tmp, "root", "user,operator")
    figures = []
    with node(tmp, "node-b", **env) as other:
        page = browser.new_page()
        with process(tmp, "node-a", args, "Application startup complete", **env):
            page.goto(f"http://127.0.0.1:{port}/health")
            page.evaluate(SUBSCRIBE, {"token": mint(tmp, "alice")})
        for n in range(1, rounds + 1):
            # node-a is down here: publish through node-b, then bring node-a back
            # (in a thread: Playwright's sync API holds this thread's event loop)
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, _publish(other.address, admin, n)).result()
            with process(tmp, "node-a", args, "Application startup complete", **env):
                started = time.time() * 1000
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    arrivals = page.evaluate("window.arrivals")
                    if any(a[0] == n for a in arrivals):
                        break
                    time.sleep(0.01)
                at = next(a[1] for a in page.evaluate("window.arrivals") if a[0] == n)
                figures.append(at - started)
                print(f"  restart {n}: first resumed message {at - started:.0f} ms after start-up")
        page.close()
    print(
        f"restart to first resumed message: median {median(figures):.0f} ms, "
        f"max {max(figures):.0f} ms (backoff base 100 ms, max 1 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.browser", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    args = parser.parse_args()
    print(machine.describe(machine.probe(), ("uvicorn", "uvloop", "playwright")), flush=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        tmp = Path(folder)
        browser = playwright.chromium.launch(executable_path=ensure_chromium(), args=FLAGS)
        env = {"REALTIME_RATE_LIMIT": "10000000", "REALTIME_RATE_BURST": "10000000"}
        with node(tmp, "echo", **env) as server:
            page = browser.new_page()
            page.goto(f"http://{server.address}/health")
            _throughput(page, mint(tmp, "alice"), args)
            page.close()
        _restart(browser, tmp, args.rounds)
        browser.close()


if __name__ == "__main__":
    main()

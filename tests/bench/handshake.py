"""Handshakes per second: connect, authenticate, first answer, close (issue 15).

    python -m tests.bench.handshake [--seconds 5] [--rounds 3] [--concurrency 16]

One bench server (tests.bench.app on uvicorn, pinned to CPU 0; this process, the load,
on CPU 1) and three scenarios, alternated round by round:

- `bare`: Starlette's accept-and-answer loop (`/bench/bare`): the WebSocket upgrade, one
  frame in, one out, the close. No token.
- `fresh`: `/ws` with a token the server has never seen (RS256, the development issuer):
  its signature is checked. The tokens are minted before the round, one per handshake.
- `reused`: `/ws`, every socket with the same token (tabs, a reconnect storm): verified
  once, then taken from the token cache (`REALTIME_TOKEN_CACHE`).

Each handshake ends when the answer to an `echo` came back; the socket is then closed.
Prints handshakes/s, the client-side p50/p99 of a whole handshake, and the ratios to
`bare` (issue 15's target: fresh and reused at least 0.5). Asserts no timing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.bench.app import BARE_PATH, FULL_PATH
from tests.bench.common import machine as machine_probe
from tests.bench.common.runner import alternate, dev_tokens, event_loop, pin_self, pinning
from tests.bench.server import bench_server

ECHO = b'{"pkg_id": 40, "req_id": "1", "data": {}}'
SCENARIOS = ("bare", "fresh", "reused")


@dataclass
class Result:
    scenario: str
    round: int
    handshakes: int
    seconds: float
    latencies_ms: list[float]
    failures: int

    @property
    def rate(self) -> float:
        return self.handshakes / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (
            f"{self.scenario:>7} {self.round:>5} {self.handshakes:>10} {self.rate:>12.0f} "
            f"{statistics.median(lat):>9.2f} {p99:>9.2f} {self.failures:>8}"
        )


HEADER = (
    f"{'case':>7} {'round':>5} {'handshakes':>10} {'per second':>12} "
    f"{'p50 ms':>9} {'p99 ms':>9} {'failures':>8}"
)


async def _one(url: str, headers: Mapping[str, str]) -> bool:
    """One handshake: upgrade, one echo answered, close. False if it did not work."""
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    answered = asyncio.get_running_loop().create_future()

    class Listener(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if not answered.done():
                answered.set_result(frame.msg_type is WSMsgType.TEXT)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not answered.done():
                answered.set_result(False)

    transport, _ = await ws_connect(Listener, url, extra_headers=dict(headers))
    try:
        transport.send(WSMsgType.TEXT, ECHO)
        async with asyncio.timeout(10):
            ok = bool(await answered)
        transport.send_close(WSCloseCode.OK)
        return ok
    finally:
        transport.disconnect()


async def _load(
    url: str, tokens: list[str] | None, seconds: float, concurrency: int
) -> tuple[int, float, list[float], int]:
    """`concurrency` loops of handshakes for `seconds` (or until the tokens run out)."""
    pool = iter(tokens) if tokens is not None else None
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            headers = {}
            if pool is not None:
                token = next(pool, None)
                if token is None:
                    return
                headers = {"Authorization": f"Bearer {token}"}
            started = time.perf_counter()
            try:
                ok = await _one(url, headers)
            except (OSError, TimeoutError, RuntimeError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - start, latencies, failures


def _tokens(key_file: str, count: int, prefix: str) -> list[str]:
    """`count` distinct tokens (distinct subjects), never presented before."""
    users = {f"{prefix}{n}": ["user"] for n in range(count)}
    return list(dev_tokens(key_file, users).values())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.handshake", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="handshakes in flight")
    parser.add_argument(
        "--fresh-tokens",
        type=int,
        default=6000,
        help="tokens minted for each fresh run (default 6000; the run stops when used up)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    return parser


def main() -> int:
    args = _parser().parse_args()
    pinned = pinning(args.no_pin)
    print(machine_probe.describe(machine_probe.probe(), ("uvicorn", "uvloop", "picows")))
    with tempfile.TemporaryDirectory(prefix="realtime-bench-") as folder:
        key_file = str(Path(folder) / "dev-key.json")
        reused = dev_tokens(key_file, {"tabs": ["user"]})["tabs"]
        env = {"BENCH_DEV_KEY_FILE": key_file}
        with bench_server(env, cpu=0 if pinned else None) as (_pid, port):
            if pinned:
                pin_self(1)
            with event_loop() as runner:
                results = _measure(args, runner, port, key_file, reused)
    _summary(results)
    return 0


def _measure(
    args: argparse.Namespace, runner: asyncio.Runner, port: int, key_file: str, reused: str
) -> list[Result]:
    def run_one(scenario: str, round_: int) -> Result:
        path = BARE_PATH if scenario == "bare" else FULL_PATH
        tokens = None
        if scenario == "reused":
            tokens = [reused] * 10**7
        elif scenario == "fresh":
            tokens = _tokens(key_file, args.fresh_tokens, f"fresh{round_}-")
        url = f"ws://127.0.0.1:{port}{path}"
        done = runner.run(_load(url, tokens, args.seconds, args.concurrency))
        return Result(scenario, round_, *done)

    def table(results: list[Result]) -> str:
        return "\n".join([HEADER, *(r.row() for r in results)])

    return alternate(args.rounds, SCENARIOS, run_one, table, lambda: time.sleep(0.5))


def _summary(results: list[Result]) -> None:
    rates = {s: statistics.median(r.rate for r in results if r.scenario == s) for s in SCENARIOS}
    print("\nmedian handshakes/s: " + ", ".join(f"{s} {rates[s]:.0f}" for s in SCENARIOS))
    for scenario in ("fresh", "reused"):
        ratio = rates[scenario] / rates["bare"] if rates["bare"] else 0.0
        print(f"{scenario}/bare: {ratio:.3f} (target at least 0.5)")


if __name__ == "__main__":
    raise SystemExit(main())

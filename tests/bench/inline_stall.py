"""An echo sent right behind a 50 ms handler on the same socket: how long it waits when
the handler is inline=True (on the event loop) and when it is a plain `def` (a thread).

    python -m tests.bench.inline_stall [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from realtime import Context, JSONObject, Package
from realtime.app import create_app, load_handlers
from realtime.auth.dev import DevIssuer
from tests.conftest import HERE, make_settings, serve
from tests.helpers import ws_connect
from tests.packages import TEST_PACKAGES

ECHO, INLINE, THREAD = 40, 970, 971


def work(ctx: Context, data: JSONObject) -> JSONObject:
    time.sleep(0.05)  # 50 ms of computation
    return {}


PACKAGES = [
    Package(INLINE, "stall.inline", work, inline=True),
    Package(THREAD, "stall.thread", work),
]


async def _echo_wait(address: str, token: str, slow: int, rounds: int) -> list[float]:
    ws = await ws_connect(address, additional_headers={"Authorization": f"Bearer {token}"})
    waits = []
    for n in range(rounds):
        await ws.send(json.dumps({"pkg_id": slow, "req_id": f"s{n}", "data": {}}))
        sent = time.perf_counter()
        await ws.send(json.dumps({"pkg_id": ECHO, "req_id": f"e{n}", "data": {}}))
        got: dict[str, float] = {}
        while len(got) < 2:
            answer: dict[str, Any] = json.loads(await ws.recv())
            got[answer["req_id"][0]] = time.perf_counter() - sent
        waits.append(got["e"] * 1000)
    await ws.close()
    return waits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        permissions = Path(tmp) / "permissions.toml"
        extra = '"stall.inline" = ["user"]\n"stall.thread" = ["user"]\n'
        text = (
            (HERE / "permissions.toml").read_text().replace("[packages]\n", "[packages]\n" + extra)
        )
        permissions.write_text(text)
        settings = make_settings(Path(tmp), permissions_file=str(permissions))
        token = DevIssuer.load_or_create(
            settings.dev_key_file, audience="realtime", client_id="realtime"
        ).mint("alice", ["user"])
        app = create_app(settings, [*load_handlers(("handlers",))[0], *TEST_PACKAGES, *PACKAGES])
        with serve(app) as address:
            for name, slow in (("inline=True", INLINE), ("plain def (thread)", THREAD)):
                waits = asyncio.run(_echo_wait(address, token, slow, rounds))
                print(
                    f"echo behind a 50 ms {name:<20} median {statistics.median(waits):6.2f} ms"
                    f"  max {max(waits):6.2f} ms  ({rounds} rounds)"
                )


if __name__ == "__main__":
    main()

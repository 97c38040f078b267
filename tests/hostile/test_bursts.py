"""A pipelined burst is answered in full (RATE_LIMITED where over the bucket) and never
punished as abuse; only a client that keeps going after the retry_after it was given is
closed with 4429."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from realtime.auth.dev import DevIssuer
from tests.conftest import build_app, make_settings, serve
from tests.helpers import ws_call, ws_closed, ws_connect

pytestmark = pytest.mark.anyio
ECHO = 40


def limited_settings(tmp_path: Path) -> Any:
    # five RATE_LIMITED in a row were enough for 4429 before: a burst of 300 hit it at once
    return make_settings(
        tmp_path, rate_limit=10.0, rate_burst=20, max_rate_limited=5, max_inflight=1024
    )


def headers(tmp_path: Path, sub: str = "alice") -> dict[str, str]:
    issuer = DevIssuer.load_or_create(
        str(tmp_path / "dev-key.json"), audience="realtime", client_id="realtime"
    )
    return {"Authorization": f"Bearer {issuer.mint(sub, ['user'])}"}


async def test_every_request_of_a_burst_gets_exactly_one_answer(tmp_path: Path) -> None:
    with serve(build_app(limited_settings(tmp_path))) as address:
        ws = await ws_connect(address, additional_headers=headers(tmp_path))
        frames = [
            json.dumps({"pkg_id": ECHO, "req_id": str(n), "data": {"n": n}}) for n in range(300)
        ]
        for frame in frames:
            await ws.send(frame)
        answers: dict[str, Any] = {}
        async with asyncio.timeout(20):
            while len(answers) < 300:
                answer = json.loads(await ws.recv())
                assert answer["req_id"] not in answers, "answered twice"
                answers[answer["req_id"]] = answer
        codes = [answers[str(n)]["status_code"] for n in range(300)]
        assert codes.count(0) >= 20 and set(codes) == {0, 5}
        limited = next(a for a in answers.values() if a["status_code"] == 5)
        assert limited["error"]["details"]["retry_after"] >= 1
        # still open: after the retry_after it was given, the client is served again
        await asyncio.sleep(limited["error"]["details"]["retry_after"])
        assert (await ws_call(ws, ECHO, {"after": "waiting"}, "late"))["data"] == {
            "after": "waiting"
        }
        await ws.close()


async def test_a_client_that_keeps_going_after_retry_after_is_closed_4429(
    tmp_path: Path,
) -> None:
    with serve(build_app(limited_settings(tmp_path))) as address:
        ws = await ws_connect(address, additional_headers=headers(tmp_path))
        control = await ws_connect(address, additional_headers=headers(tmp_path, "bob"))

        async def flood() -> None:
            for n in range(1000):  # 200 a second for at most 5 s, whatever it is told
                await ws.send(json.dumps({"pkg_id": ECHO, "req_id": str(n), "data": {}}))
                await asyncio.sleep(0.005)

        sender = asyncio.create_task(flood())
        assert await ws_closed(ws, timeout=10) == (4429, "sustained rate-limit violation")
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        # another caller on the same server is unaffected
        assert (await ws_call(control, ECHO, {"ok": 1}))["data"] == {"ok": 1}
        await control.close()

"""realtime.memory: memory is given back once after a crowd of sockets has left."""

from __future__ import annotations

import asyncio
import ctypes.util
import gc
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from starlette.testclient import TestClient
from websockets.asyncio.client import connect as ws_connect

from realtime.app import GC_THRESHOLDS
from realtime.lifespan import dev_issuer
from realtime.memory import Trimmer, malloc_trim
from tests.conftest import build_app, make_settings, serve
from tests.helpers import auth_header, call


def test_a_crowd_that_left_is_given_back_once_after_the_delay() -> None:
    trimmer = Trimmer(delay=5, min_drop=100)
    for sockets in range(0, 1001, 50):  # a crowd arrives
        assert not trimmer.observe(sockets, now=0)
    assert not trimmer.observe(600, now=1)  # 400 left: not yet half of the peak
    assert not trimmer.observe(400, now=2)  # 600 left, at most half remain: due at 7
    assert not trimmer.observe(100, now=6.9)
    assert trimmer.observe(100, now=7)  # given back
    assert trimmer.trims == 1
    assert not trimmer.observe(90, now=20)  # the peak is now 400: a few more is nothing
    assert trimmer.trims == 1


def test_a_crowd_that_comes_back_within_the_delay_is_not_trimmed() -> None:
    """A reconnect storm: every socket dropped at once and reconnecting. A trim then
    would stall the loop with a full collection while the crowd is back."""
    trimmer = Trimmer(delay=5, min_drop=100)
    trimmer.observe(1000, now=0)
    assert not trimmer.observe(0, now=1)  # all gone: due at 6
    assert not trimmer.observe(700, now=3)  # coming back
    assert not trimmer.observe(1000, now=6)  # back at the due time: no trim
    assert trimmer.trims == 0
    assert not trimmer.observe(100, now=7)  # a later departure is due again, at 12
    assert trimmer.observe(100, now=12)
    assert trimmer.trims == 1


def test_a_small_crowd_is_not_worth_a_trim() -> None:
    trimmer = Trimmer(min_drop=100)
    trimmer.observe(150, now=0)
    assert not trimmer.observe(60, now=1)  # 90 left: below min_drop
    assert not trimmer.observe(0, now=2)  # 150 left, none remain: due now
    assert trimmer.observe(0, now=2)
    assert trimmer.trims == 1


def test_glibc_malloc_trim_is_found() -> None:
    assert "libc.so" in (ctypes.util.find_library("c") or "")  # this machine's glibc
    trim = malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)  # 1: memory was released, 0: there was none to release


def test_the_collector_is_tuned_while_the_app_serves_and_restored_after(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with TestClient(build_app(make_settings(tmp_path))) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # the modules and the app, at least
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_left_alone_when_told(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with TestClient(build_app(make_settings(tmp_path, gc_tuning=False))) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


def _garbage_of(run: Callable[[], None]) -> list[object]:
    """What `run` left that only the collector could free (reference cycles)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _server_side(garbage: list[object]) -> Counter[str]:
    modules = ("realtime", "starlette", "uvicorn", "httptools")
    return Counter(type(o).__qualname__ for o in garbage if type(o).__module__.startswith(modules))


def test_a_closed_socket_is_freed_without_the_collector(tmp_path: Path) -> None:
    """A socket that ended was ~55 objects of reference cycles (its tasks, their
    tracebacks, the outbox's callback, the requests' back reference), which with
    thousands of sockets open only a full collection of ~0.4 s freed."""
    settings = make_settings(tmp_path, gc_tuning=False)
    token = dev_issuer(settings).mint("alice", ["user"])
    with TestClient(build_app(settings)) as client:

        def sockets() -> None:
            for _ in range(5):
                with client.websocket_connect("/ws", headers=auth_header(token)) as ws:
                    assert call(ws, 31, {"topic": "broadcast"})["status_code"] == 0

        sockets()  # the first socket's one-time allocations
        garbage = _garbage_of(sockets)
    assert _server_side(garbage) == Counter()
    assert len(garbage) == 0  # the test client's own objects included


def test_a_socket_served_by_uvicorn_is_freed_without_the_collector(tmp_path: Path) -> None:
    """The same through the protocols `realtime serve` runs: the HTTP protocol that
    upgraded the socket (its parser held its callbacks) and the socket's own."""
    settings = make_settings(tmp_path, gc_tuning=False)
    token = dev_issuer(settings).mint("alice", ["user"])
    headers = {"Authorization": f"Bearer {token}"}

    async def open_and_close(address: str) -> None:
        async with ws_connect(f"ws://{address}/ws", additional_headers=headers) as ws:
            await ws.send(json.dumps({"pkg_id": 31, "req_id": "1", "data": {"topic": "t"}}))
            assert json.loads(await ws.recv())["status_code"] == 0

    with serve(build_app(settings), http="realtime.guard:GuardedHttpProtocol") as address:
        asyncio.run(open_and_close(address))

        def sockets() -> None:
            for _ in range(5):
                asyncio.run(open_and_close(address))
            time.sleep(0.5)  # the server's side of the last one ends

        garbage = _garbage_of(sockets)
    assert _server_side(garbage) == Counter()

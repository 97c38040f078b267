"""The benchmarked server in its own process: uvicorn, uvloop, httptools, one worker.

    python -m uvicorn --factory tests.bench.app:create_bench_app --loop uvloop \
        --http httptools --ws auto --workers 1 --no-access-log --log-level warning ...

`bench_server` starts it (or another server's command) on a free port of 127.0.0.1 (pinned to one CPU when asked),
waits for `/health`, and stops it (SIGINT, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from tests.bench.common import ROOT

FACTORY = "tests.bench.app:create_bench_app"
WS_MAX_SIZE = 64 * 1024  # what `realtime serve` passes (REALTIME_MAX_FRAME_BYTES)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_command(port: int, factory: str = FACTORY) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "auto",
        "--ws-max-size",
        str(WS_MAX_SIZE),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
    ]


def _wait_healthy(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the bench server exited with {process.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        time.sleep(0.05)
    raise RuntimeError(f"the bench server did not answer /health within {timeout} s")


@contextlib.contextmanager
def bench_server(
    env: Mapping[str, str],
    *,
    cpu: int | None = None,
    factory: str = FACTORY,
    startup_timeout: float = 30.0,
    cwd: Path = ROOT,
    command: Callable[[int], list[str]] | None = None,
) -> Iterator[tuple[int, int]]:
    """Run the server; yields (pid, port). `cpu` pins it to that CPU. `command(port)` is a
    server that is not uvicorn (e.g. tests/bench/peers/picows_server.py): it must answer
    `GET /health` with 200 on that port, and stop on SIGINT."""
    port = free_port()
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    argv = command(port) if command is not None else uvicorn_command(port, factory)
    process = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, preexec_fn=pin)
    try:
        _wait_healthy(process, port, startup_timeout)
        yield process.pid, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

"""Real `realtime serve` processes for multi-node and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    process: subprocess.Popen[str]
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """SIGKILL to the node and every process it started (`--workers N`'s servers
        would outlive their supervisor, and go on serving and subscribing)."""
        kill_group(self.process)
        self.process.wait(10)


def kill_group(child: subprocess.Popen[str]) -> None:
    """SIGKILL to the process group `child` leads (started with start_new_session)."""
    with suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(child.pid, signal.SIGKILL)


def node_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REALTIME_", "KEYCLOAK_"))}
    base.pop("DATABASE_URL", None)
    base.pop("REDIS_URL", None)
    return {
        **base,
        "REALTIME_DEV_KEY_FILE": str(tmp_path / "dev-key.json"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_DEV_USERS_FILE": str(ROOT / "dev-users.toml"),
        "PYTHONPATH": str(ROOT),  # test-only handler modules (tests.failing_jobs)
        **env,
    }


@contextmanager
def process(tmp_path: Path, name: str, args: list[str], ready: str, **env: str) -> Iterator[Node]:
    """A `realtime <args>` process in its own directory, once its output shows `ready`."""
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    log = workdir / "output.log"
    with log.open("w") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", *args],
            cwd=workdir,
            env=node_env(tmp_path, **env),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: a kill reaches what it started too
        )
    deadline = time.monotonic() + 30
    while ready not in log.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            kill_group(child)
            raise RuntimeError(f"{name} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    try:
        yield Node(child, "", log)
    finally:
        kill_group(child)  # even when the leader is gone: its workers may not be
        child.wait(10)


@contextmanager
def node(tmp_path: Path, name: str = "node", **env: str) -> Iterator[Node]:
    port = free_port()
    args = ["serve", "--port", str(port)]
    with process(tmp_path, name, args, "Application startup complete", **env) as server:
        server.address = f"127.0.0.1:{port}"
        yield server


@contextmanager
def worker(tmp_path: Path, name: str = "worker", **env: str) -> Iterator[Node]:
    with process(tmp_path, name, ["worker"], "ready,", **env) as child:
        yield child


def mint(tmp_path: Path, sub: str, roles: str = "user", tenant: str = "acme") -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "realtime.cli",
            "token",
            "--sub",
            sub,
            "--roles",
            roles,
            "--tenant",
            tenant,
        ],
        env=node_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()

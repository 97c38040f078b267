"""One idle-memory run: a server, its RSS before any socket, a crowd of idle sockets, the
RSS again (`measure`), and the pieces it is made of: the servers (`realtime_server`,
`bare_server`), the client processes holding the sockets (`crowd`), the tokens
(`tokens_file`). Used by `python -m tests.bench.idle` and `python -m tests.bench.compare`.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common import ROOT
from tests.bench.common.figures import Column, num
from tests.bench.common.probes import Probe, memory
from tests.bench.common.runner import dev_tokens
from tests.bench.server import bench_server
from tests.nodes import node

SERVER_DESCRIPTORS = 256  # kept free in the server for its own files, the database, ...
USERS = 100  # subjects the sockets are spread over (one token each)
REALTIME_ENV = {"REALTIME_RATE_LIMIT": "1000000", "REALTIME_RATE_BURST": "1000000"}

Server = AbstractContextManager[tuple[int, int]]  # a running server: (pid, port)


@dataclass
class IdleRun:
    system: str
    round: int
    sockets: int
    failed: int
    before: dict[str, float]
    after: dict[str, float]
    probes: dict[str, float] = field(default_factory=dict)  # over the run, when asked

    @property
    def kib_per_socket(self) -> float:
        grown = self.after["rss_mib"] - self.before["rss_mib"]
        return grown * 1024 / self.sockets if self.sockets else float("nan")


COLUMNS: list[Column[IdleRun]] = [
    Column("sockets", lambda r: r.sockets),
    Column("failed", lambda r: r.failed),
    Column("RSS before (MiB)", lambda r: r.before["rss_mib"], lambda v: num(v, 1)),
    Column("RSS after (MiB)", lambda r: r.after["rss_mib"], lambda v: num(v, 1)),
    Column("KiB/socket", lambda r: r.kib_per_socket, lambda v: num(v, 1)),
    Column("descriptors after", lambda r: r.after["fds"]),
    Column("kernel TCP (MiB)", lambda r: r.after["tcp_mem_mib"], lambda v: num(v, 1)),
]


def raise_descriptor_limit() -> int:
    """Soft limit to the hard one (the servers and clients inherit it); the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@contextlib.contextmanager
def realtime_server(folder: Path, **env: str) -> Iterator[tuple[int, int]]:
    """`realtime serve` on the embedded default in `folder`; (pid, port)."""
    with node(folder, "realtime", **REALTIME_ENV, **env) as server:
        yield server.process.pid, int(server.address.rsplit(":", 1)[1])


@contextlib.contextmanager
def bare_server(
    allocator: str, factory: str = "tests.bench.bare:create_app", **env: str
) -> Iterator[tuple[int, int]]:
    """tests.bench.bare (or another `factory`) on tests.bench.server's uvicorn command;
    (pid, port)."""
    env = {"PYTHONMALLOC": allocator, **env}
    with bench_server(env, factory=factory) as (pid, port):
        yield pid, port


@contextlib.contextmanager
def crowd(
    port: int,
    count: int,
    clients: int,
    tokens: Path | None,
    round_: int,
    path: str = "/ws",
    socketio: bool = False,
) -> Iterator[tuple[int, int]]:
    """`count` idle sockets on `path` held by `clients` processes, each from its own
    loopback address; (opened, failed) once all are open (or failed). Reset on exit.
    `socketio`: the sockets speak Socket.IO (tests/bench/idle/client.py)."""
    shares = [count // clients + (1 if n < count % clients else 0) for n in range(clients)]
    processes = []
    for n, share in enumerate(s for s in shares if s):
        command = [sys.executable, "-m", "tests.bench.idle.client", "--port", str(port)]
        command += ["--count", str(share), "--source", f"127.0.{round_ % 250}.{10 + n}"]
        command += ["--tokens", str(tokens)] if tokens else []
        command += ["--path", path] if path != "/ws" else []
        command += ["--socketio"] if socketio else []
        processes.append(
            subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        )
    try:
        opened = failed = 0
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().decode().split()  # "ready <open> <failed>"
            if not line:
                raise RuntimeError(f"a client process ended ({process.wait()})")
            opened, failed = opened + int(line[1]), failed + int(line[2])
        yield opened, failed
    finally:
        for process in processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.write(b"\n")
                process.stdin.close()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def tokens_file(folder: Path) -> Path:
    """Tokens of USERS subjects from the dev key the `realtime` server is given."""
    tokens = dev_tokens(str(folder / "dev-key.json"), {f"idle{n}": ["user"] for n in range(USERS)})
    path = folder / "tokens.txt"
    path.write_text("\n".join(tokens.values()))
    return path


@dataclass(frozen=True)
class Crowd:
    """How many idle sockets, held by how many client processes, and how they speak."""

    sockets: int
    clients: int = 4
    settle: float = 5.0  # seconds before each RSS read
    tokens: Path | None = None
    path: str = "/ws"
    socketio: bool = False


def measure(
    system: str,
    round_: int,
    server: Server,
    how: Crowd,
    probes: Callable[[int], Mapping[str, Probe]] | None = None,
) -> IdleRun:
    """One server, its RSS before any socket, `how.sockets` idle sockets, the RSS again.
    `probes(pid)` are measured over the first settle, the server started and no client
    yet (the machine's noise: the client processes would count as other programs)."""
    with server as (pid, port):
        started = dict(probes(pid)) if probes is not None else {}
        for probe in started.values():
            probe.start()
        time.sleep(how.settle)
        before = memory(pid)
        measured = {name: probe.stop() for name, probe in started.items()}
        sockets = crowd(port, how.sockets, how.clients, how.tokens, round_, how.path, how.socketio)
        with sockets as (opened, failed):
            time.sleep(how.settle)
            after = memory(pid)
    return IdleRun(system, round_, opened, failed, before, after, measured)

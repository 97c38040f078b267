"""The rows of the comparison: each system, how its server starts for each figure and
how the load speaks to it, or why it has no such figure ("n/a").

| system | echo (`Echo`) | fan-out (tests/bench/fanout/systems.py `System`) | idle (`Idle`) |
|---|---|---|---|
| realtime | tests/bench/app.py (the echo bench's server), `/ws` + dev token, pkg 40 | fanout/apps.py `realtime_app`, in-process bus, `topics.publish` | `realtime serve` (tests/bench/idle/runs.py) |
| realtime-redis | n/a | `realtime_app` on the Redis bus | n/a |
| bare | tests/bench/bare.py | fanout/apps.py `bare_app` | tests/bench/bare.py |
| asgi | tests/bench/peers/asgi.py | the same | the same |
| socketio | fanout/apps.py `socketio_app` (`echo` event) | the same | the same (Socket.IO idle client) |
| channels | fanout/apps.py `channels_app` (`/echo/`) | the same | the same |
| picows | tests/bench/peers/picows_server.py | the same | the same |

Every server is its own process, pinned to CPU 0 when pinning (`Context.cpu`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.common.runner import pin_process
from tests.bench.compare import workloads
from tests.bench.fanout import systems as fanout
from tests.bench.idle import runs as idle
from tests.bench.server import bench_server

ECHO, FANOUT, IDLE = "echo", "fanout", "idle"  # the figures (--figures)
ALLOCATOR = "malloc"  # idle servers: the allocator `realtime serve` runs on
Command = Callable[[int], list[str]]


@dataclass(frozen=True)
class Context:
    """What every run of one comparison shares."""

    tmp: Path  # the run's temporary directory
    key: str  # the development issuer's key file (the realtime servers get it)
    token: str  # an echo caller's token (role user)
    cpu: int | None  # the servers' CPU (None: not pinned)


@dataclass(frozen=True)
class Server:
    """How one server process starts: a uvicorn factory on tests/bench/server.py's
    command, or a `command` of its own that answers `GET /health` like them."""

    factory: str = ""
    command: Command | None = None

    def start(
        self, cpu: int | None, env: Mapping[str, str] | None = None
    ) -> contextlib.AbstractContextManager[tuple[int, int]]:
        return bench_server(env or {}, cpu=cpu, factory=self.factory, command=self.command)


@dataclass(frozen=True)
class Echo:
    server: Server
    workload: workloads.Builder
    realtime: bool = False  # the server is realtime's: it needs the dev key


@dataclass(frozen=True)
class Idle:
    server: Server | None  # None: `realtime serve`, as tests.bench.idle runs it
    path: str = "/ws"
    socketio: bool = False


@dataclass(frozen=True)
class System:
    """A row: its name, each figure's setup (None: n/a) and why a figure is n/a."""

    name: str
    echo: Echo | None
    fanout: fanout.System | None
    idle: Idle | None
    not_applicable: dict[str, str] = field(default_factory=dict)

    def has(self, figure: str) -> bool:
        return {ECHO: self.echo, FANOUT: self.fanout, IDLE: self.idle}[figure] is not None


def _picows(port: int) -> list[str]:
    return [sys.executable, "-m", "tests.bench.peers.picows_server", "--port", str(port)]


APPS = fanout.APPS
ASGI = Server("tests.bench.peers.asgi:create_app")
PICOWS = Server(command=_picows)
SOCKETIO = Server(f"{APPS}:socketio_app")
CHANNELS = Server(f"{APPS}:channels_app")
BARE = Server("tests.bench.bare:create_app")
REDIS_ONLY = (
    "the Redis bus row is a fan-out figure: echo and an idle socket do not touch the bus "
    "(the realtime row measures them on the embedded default)"
)


def known() -> dict[str, System]:
    """Every system, in the table's order."""
    fanout_systems = fanout.systems()
    return {
        system.name: system
        for system in (
            System(
                "realtime",
                Echo(
                    Server("tests.bench.app:create_bench_app"), workloads.realtime("realtime"), True
                ),
                fanout_systems["realtime-memory"],
                Idle(None),
            ),
            System(
                "realtime-redis",
                None,
                fanout_systems["realtime-redis"],
                None,
                {ECHO: REDIS_ONLY, IDLE: REDIS_ONLY},
            ),
            System(
                "bare",
                Echo(BARE, workloads.envelope_echo("bare", "/ws")),
                fanout_systems["bare"],
                Idle(BARE, "/ws"),
            ),
            System(
                "asgi",
                Echo(ASGI, workloads.envelope_echo("asgi", "/echo/")),
                fanout.System("asgi", ASGI.factory, "bare"),
                Idle(ASGI, "/echo/"),
            ),
            System(
                "socketio",
                Echo(SOCKETIO, workloads.socketio_echo("socketio")),
                fanout_systems["socketio"],
                Idle(SOCKETIO, workloads.SOCKETIO_PATH, socketio=True),
            ),
            System(
                "channels",
                Echo(CHANNELS, workloads.envelope_echo("channels", "/echo/")),
                fanout_systems["channels"],
                Idle(CHANNELS, "/echo/"),
            ),
            System(
                "picows",
                Echo(PICOWS, workloads.envelope_echo("picows", "/echo/")),
                fanout.System("picows", "", "bare", command=_picows),
                Idle(PICOWS, "/echo/"),
            ),
        )
    }


def echo_server(echo: Echo, context: Context) -> contextlib.AbstractContextManager[tuple[int, int]]:
    env = {"BENCH_DEV_KEY_FILE": context.key} if echo.realtime else {}
    return echo.server.start(context.cpu, env)


@contextlib.contextmanager
def idle_server(setup: Idle, folder: Path, cpu: int | None) -> Iterator[tuple[int, int]]:
    """The idle run's server on the allocator `realtime serve` chooses (`realtime serve`
    itself when `setup.server` is None, in `folder`, then pinned: it is started by
    tests/nodes.py, which does not pin)."""
    if setup.server is None:
        with idle.realtime_server(folder) as (pid, port):
            if cpu is not None:
                pin_process(pid, cpu)
            yield pid, port
    else:
        with setup.server.start(cpu, {"PYTHONMALLOC": ALLOCATOR}) as (pid, port):
            yield pid, port

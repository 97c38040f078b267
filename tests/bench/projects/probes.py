"""CPU of the PostgreSQL backends serving the bench database, over a measurement window.

PostgreSQL runs one process per connection and titles it
`postgres: <cluster>: <user> <database> <client> <state>`; the backends of the bench
database are found by that title in /proc, so nothing connects to the database to
measure it. Backends that appear during the window count with all their CPU time (they
started inside it); one that goes away during the window is lost (pools keep theirs).

With `pin`, the probe also pins those backends to that CPU when the window starts (after
the warm-up, when the pools have all their connections): on a 2-core machine this gives
the database the load generator's core, as if it ran on a machine of its own, and leaves
the server's core to the server. Only the bench database's backends are touched.
"""

from __future__ import annotations

import contextlib
import os
import time

from tests.bench.common.probes import cpu_seconds


def backends(database: str) -> dict[str, float]:
    """pid -> CPU seconds of every backend connected to `database`."""
    needle = f" {database} ".encode()
    found: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                title = handle.read()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and needle in title:
            with contextlib.suppress(OSError):  # gone since it was listed
                found[pid] = cpu_seconds(pid)
    return found


def pin_backends(pids: list[str], cpu: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone since it was listed
            os.sched_setaffinity(int(pid), {cpu})


class PostgresCPU:
    """Share of one core used by the database's backends (a `common.probes.Probe`)."""

    def __init__(self, database: str, pin: int | None = None) -> None:
        self.database = database
        self.pin = pin
        self._started: tuple[dict[str, float], float] | None = None

    def start(self) -> None:
        found = backends(self.database)
        if self.pin is not None:
            pin_backends(list(found), self.pin)
        self._started = (found, time.perf_counter())

    def stop(self) -> float:
        assert self._started is not None
        before, wall = self._started
        after = backends(self.database)
        used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
        return used / max(time.perf_counter() - wall, 1e-9)

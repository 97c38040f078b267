"""What is measured over a run's window: each probe is started when the window opens and
stopped when it closes; `stop()` gives its figure (a share of one core for the CPU ones).

- `ProcessCPU`: another process's CPU time, from /proc/<pid>/stat;
- `SelfCPU`: this process's (the load generator's), from `time.process_time`;
- `CoreBusy`: one core's busy share from /proc/stat (softirq time included);
- `OthersPeak`: the worst burst of the programs that are not the bench's own;
- `OthersCPU`: the same programs' CPU over the whole window (their mean share, from
  each process's own figures);
- `Steal`: the share of the machine's time the hypervisor gave to other guests;
- `noise_probes(pids)`: the last three, the machine's noise beside a figure;
- `cpu_by_thread(pid)`: a process's CPU so far by thread name (not over a window);
- `memory(pid)`: a process's RSS and descriptors and the kernel's TCP memory, at once
  (not over a window: the idle and soak benches read it before and after).

`tests.bench.common.pyspy.PySpy` and `tests.bench.projects.probes.PostgresCPU` are probes
too.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Protocol

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Probe(Protocol):
    """Something measured over the window, e.g. the server's CPU (`ProcessCPU`)."""

    def start(self) -> None: ...

    def stop(self) -> float: ...


def cpu_seconds(pid: int | str) -> float:
    """CPU seconds (user + system) used so far by process `pid` (OSError once it is gone)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def cpu_by_thread(pid: int | str) -> dict[str, float]:
    """CPU seconds used so far by each thread of `pid`, summed by thread name (the main
    thread is the process's name; asyncio's executor threads are `asyncio_N`, ...): where
    a process's CPU went when it is more than its event loop."""
    used: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{task}/comm") as handle:
                name = handle.read().strip().rstrip("0123456789_") or "?"
            seconds = cpu_seconds(f"{pid}/task/{task}")
            used[name] = used.get(name, 0.0) + seconds
    return used


class ProcessCPU:
    """CPU seconds (user + system) of another process over a window, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._started: tuple[float, float] | None = None

    def read(self) -> float:
        return cpu_seconds(self.pid)

    def start(self) -> None:
        self._started = (self.read(), time.perf_counter())

    def stop(self) -> float:
        """Share of one core used since `start()` (1.0 = one core busy all the time)."""
        assert self._started is not None
        cpu, wall = self._started
        return (self.read() - cpu) / max(time.perf_counter() - wall, 1e-9)


class SelfCPU(ProcessCPU):
    """The same for this process (the load generator), with `time.process_time`."""

    def __init__(self) -> None:
        super().__init__(os.getpid())

    def read(self) -> float:
        return time.process_time()


class CoreBusy:
    """Busy share of one CPU core (everything but idle and iowait), from /proc/stat.

    Unlike a process's own CPU time this includes the softirq time spent there on the
    loopback TCP traffic, so it shows whether the core is saturated.
    """

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self._started: tuple[int, int] | None = None

    def read(self) -> tuple[int, int]:
        prefix = f"cpu{self.cpu} "
        with open("/proc/stat") as stat:
            line = next(line for line in stat if line.startswith(prefix))
        ticks = [int(v) for v in line.split()[1:]]
        idle = ticks[3] + ticks[4]
        total = sum(ticks[:8])  # guest time is already counted in user
        return total - idle, total

    def start(self) -> None:
        self._started = self.read()

    def stop(self) -> float:
        assert self._started is not None
        busy, total = self.read()
        busy0, total0 = self._started
        return (busy - busy0) / max(total - total0, 1)


class OthersPeak:
    """CPU used by processes other than the bench's own (its servers, this client, Redis)
    in the worst `span` seconds of the window, as a share of one core: a burst of some
    other program on the machine (on this VM the RabbitMQ tooling starts an Erlang VM about
    once a minute, ~110-145 ms of CPU in 150 ms) shows here. Sampled every 50 ms by a
    thread: all cores' busy ticks from /proc/stat minus those of the known (see
    `others_cpu_seconds`; so processes that start and end within the window count too)."""

    def __init__(self, pids: Sequence[int], span: float = 0.25) -> None:
        self.pids = [*pids, os.getpid(), *pids_named(b"redis-server")]
        self.span = span
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples: list[tuple[float, float]] = []  # (time, other CPU seconds so far)

    def _others(self) -> float:
        return others_cpu_seconds(self.pids)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append((time.perf_counter(), self._others()))

    def start(self) -> None:
        self._samples = [(time.perf_counter(), self._others())]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        worst, first = 0.0, 0
        for last, (now, cpu) in enumerate(self._samples):
            while now - self._samples[first][0] > self.span and first < last:
                first += 1
            if now > self._samples[first][0]:
                worst = max(worst, (cpu - self._samples[first][1]) / self.span)
        return worst


def others_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds used so far by every process but `pids`: all cores' user, nice,
    system, irq and softirq ticks from /proc/stat minus what `pids` used (a process gone
    is not subtracted). The interrupts count because with tick-based accounting (this
    VM's kernel: no CONFIG_IRQ_TIME_ACCOUNTING) a process's system time includes the
    softirq ticks that hit it, the loopback TCP work of the bench's own sockets: without
    them the others came out negative under load."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    total = sum(ticks[:3]) + ticks[5] + ticks[6]  # user, nice, system, irq, softirq
    own = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            own += cpu_seconds(pid)
    return total / CLOCK_TICKS - own


class OthersCPU:
    """CPU used by processes other than the bench's own over the whole window, as a share
    of one core: another session's tests or benches running beside this one.

    Read from every process's /proc/<pid>/stat at the start and the end (its CPU, and
    that of its children it reaped), not from /proc/stat as `OthersPeak` samples it: the
    kernel's totals are ticks sampled 100 times a second, a process's CPU its precise run
    time, and a process that runs between ticks (an event loop answering one request at a
    time) is missed by the first and counted by the second: a window's difference came
    out negative. Own: `pids`, this process, Redis, and their children. A process that
    started and ended within the window counts if its parent reaped it and lives."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = {*pids, os.getpid(), *pids_named(b"redis-server")}
        self._started: tuple[dict[int, float], float] | None = None

    def _others(self) -> dict[int, float]:
        """pid -> CPU seconds so far (its own and its reaped children's), not ours."""
        found = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    with open(f"/proc/{entry}/stat", "rb") as handle:
                        stat = handle.read()
                    fields = stat[stat.rindex(b")") + 2 :].split()
                    pid, parent = int(entry), int(fields[1])
                    if pid not in self.pids and parent not in self.pids:
                        found[pid] = sum(int(v) for v in fields[11:15]) / CLOCK_TICKS
        return found

    def start(self) -> None:
        self._started = (self._others(), time.perf_counter())

    def stop(self) -> float:
        assert self._started is not None
        before, wall = self._started
        after = self._others()
        used = sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())
        return used / max(time.perf_counter() - wall, 1e-9)


class Steal:
    """Share of the machine's CPU time stolen by the hypervisor over the window (the
    `steal` ticks of all cores in /proc/stat over all their ticks): on a VM whose host is
    busy, every figure of the window is slowed by about that share."""

    def __init__(self) -> None:
        self._started: tuple[int, int] | None = None

    @staticmethod
    def read() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
        return ticks[7], sum(ticks[:8])  # steal; user .. steal (guest is counted in user)

    def start(self) -> None:
        self._started = self.read()

    def stop(self) -> float:
        assert self._started is not None
        steal, total = self.read()
        steal0, total0 = self._started
        return (steal - steal0) / max(total - total0, 1)


def noise_probes(pids: Sequence[int]) -> dict[str, Probe]:
    """The machine's noise over a window, beside the figures of the bench's processes
    `pids`: `steal` (of the machine's time), `others` (other programs' CPU, mean share of
    one core) and `others peak` (their worst 250 ms)."""
    return {"steal": Steal(), "others": OthersCPU(pids), "others peak": OthersPeak(pids)}


def pids_named(name: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm", "rb") as comm:
                if comm.read().strip() == name:
                    found.append(int(entry))
    return found


def cpu_probes(pids: dict[str, int], pinned: bool) -> dict[str, Probe]:
    """A `ProcessCPU` per named process, and with pinning the two cores' busy shares
    (`core 0 busy`, `core 1 busy`: whole cores, softirq of the loopback TCP included)."""
    probes: dict[str, Probe] = {name: ProcessCPU(pid) for name, pid in pids.items()}
    if pinned:
        probes |= {"core 0 busy": CoreBusy(0), "core 1 busy": CoreBusy(1)}
    return probes


def memory(pid: int) -> dict[str, float]:
    """Process `pid`'s RSS and its high-water mark (MiB), its open descriptors, and the
    kernel's TCP memory (MiB, every socket of the machine: the buffers are not the
    process's RSS)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith("Vm"))
    with open("/proc/net/sockstat") as sockstat:
        tcp = next(line.split() for line in sockstat if line.startswith("TCP:"))
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "hwm_mib": int(fields["VmHWM"].split()[0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "tcp_mem_mib": int(tcp[tcp.index("mem") + 1]) * PAGE / 2**20,
    }

"""The one py-spy wrapper of every bench (`--profile` of tests.bench, tests.bench.fanout
and tests.bench.projects), so their profiles are comparable.

Always the same sampling:

- `--rate 200`: 200 samples a second of the server (a 10 s window is 2,000 samples);
- `--nonblocking`: py-spy reads the process without stopping it. Stopping it for each
  sample (py-spy's default) makes the samples land on system calls (the socket writes)
  far more often than the time spent there, and slows the server it measures;
- `--format raw`: collapsed stacks, one `frame;frame;... count` line per stack
  (`tests.bench.projects.profiling.profile_summary` counts them by function; flamegraph
  tools read them too).

Needs `py-spy` (the bench extra) next to this Python or on the PATH, and the right to
ptrace the server (root, or `kernel.yama.ptrace_scope=0`). A failed recording is printed,
never silently dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

RATE = 200  # samples per second
MODE = "--nonblocking"


def executable() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or str(beside)


class PySpy:
    """A probe that records process `pid` with py-spy over the measurement window and
    writes the collapsed stacks to `output`. Its figure is nan (not a share)."""

    def __init__(self, pid: int, duration: float, output: Path) -> None:
        self.output = output
        self.command = [
            *(executable(), "record", "--pid", str(pid)),
            *("--duration", str(max(1, round(duration))), "--rate", str(RATE), MODE),
            *("--format", "raw", "--output", str(output)),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def stop(self) -> float:
        """Wait for py-spy to finish its `--duration` (it started with the window)."""
        if self.process is None:
            return float("nan")
        try:
            _, errors = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        if self.process.returncode != 0:
            tail = errors.decode(errors="replace").strip()[-500:]
            print(f"py-spy failed ({self.process.returncode}): {tail}", file=sys.stderr)
        return float("nan")

"""What every benchmark of tests/bench shares (nothing here measures on import):

- `probes`: what is measured over a run's window (a process's CPU, a core's busy share,
  other programs' peak), behind one `Probe` protocol;
- `pyspy`: the one py-spy wrapper (a probe too: same rate and mode in every bench);
- `machine`: the machine, the installed versions and the commit a run measured;
- `figures`: percentiles, medians, ratios against a baseline of the same run, the tables;
- `runner`: the event loop, CPU pinning, dev tokens, the rounds that alternate scenarios.

The benchmarked server process itself is started by `tests.bench.server` (one uvicorn
command for every bench, pinned to a CPU when asked).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the repository

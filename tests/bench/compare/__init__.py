"""Side by side (issue 15's table): `python -m tests.bench.compare --help`.

realtime and its peers (bare Starlette + orjson, a bare ASGI callable, python-socketio,
Django Channels, and picows as the practical limit), each in its own server process
pinned to CPU 0, the load from this process pinned to CPU 1, alternated round by round
(tests/bench/common/runner.py `alternate`), in one run: echo at three loads, fan-out to
many subscribers, memory per idle socket. Printed: every run as it comes, then the
figures side by side, their ratios to bare Starlette of the same run, and the machine's
noise (steal, other programs' CPU) beside them. See docs/benchmarks.md.

- `systems`: the rows (how each system's servers start, or why a figure is n/a);
- `workloads`: the echo request each system is sent (realtime's envelope, Socket.IO's);
- `tables`: what is printed;
- `__main__`: the flags and the rounds.

The runners are the other benches': tests/bench/loadgen.py (echo),
tests/bench/fanout/runs.py (fan-out), tests/bench/idle/runs.py (idle); the probes
tests/bench/common/probes.py's. Nothing here asserts a timing.
"""

"""The HTTP load generator: wrk (C, epoll, keep-alive), driven by a generated Lua script.

One wrk thread (pinned with the rest of the load generator to its CPU) keeps
`connections` keep-alive connections busy, one request in flight on each, for
`duration` seconds. The Lua script walks the first `pages` pages (`?page=N&per_page=20`)
and, when wrk is done, prints one line of JSON with the counts, errors and latency
percentiles of its HDR histogram. Responses other than 2xx/3xx are counted as errors by
wrk; that the bodies are right is checked once before the runs (`__main__.check_parity`).

wrk's CPU time is read from `getrusage(RUSAGE_CHILDREN)` around the run (wrk is the only
child reaped in that window).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

MARK = "BENCH-JSON "
SCRIPT = """
local page = 0
local pages = %(pages)d
local per_page = %(per_page)d
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer %(token)s"

request = function()
  page = page %% pages + 1
  return wrk.format(nil, "%(path)s?page=" .. page .. "&per_page=" .. per_page)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%(mark)s{\\"requests\\":%%d,\\"duration_us\\":%%d,\\"connect\\":%%d,\\"read\\":%%d," ..
    "\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d," ..
    "\\"p99_us\\":%%d,\\"max_us\\":%%d}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration: float  # seconds
    errors: int  # connect + read + write + timeout + non-2xx/3xx statuses
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # share of one core used by wrk over its run


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install -y wrk)")
    return path


def lua_script(token: str, *, path: str, pages: int, per_page: int) -> str:
    values: Mapping[str, object] = {
        "token": token,
        "path": path,
        "pages": pages,
        "per_page": per_page,
        "mark": MARK,
    }
    return SCRIPT % values


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str,
    token: str,
    *,
    connections: int,
    duration: float,
    pages: int,
    per_page: int = 20,
    threads: int = 1,
    timeout: float = 10.0,
) -> WrkResult:
    """One wrk run against `url` (e.g. http://127.0.0.1:PORT/projects), bounded in time."""
    base, _, path = url.partition("://")[2].partition("/")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-") as script:
        script.write(lua_script(token, path="/" + path, pages=pages, per_page=per_page))
        script.flush()
        command = [
            wrk_path(),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={max(1, round(timeout))}s",
            "-s",
            script.name,
            f"http://{base}",
        ]
        cpu, wall = _children_cpu(), time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + timeout + 30
        )
        cpu, wall = _children_cpu() - cpu, time.perf_counter() - wall
    line = next((ln for ln in completed.stdout.splitlines() if ln.startswith(MARK)), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip()[:500]}\n"
            f"{completed.stdout[-1000:]}"
        )
    data = json.loads(line[len(MARK) :])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        duration=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        client_cpu=cpu / max(wall, 1e-9),
    )

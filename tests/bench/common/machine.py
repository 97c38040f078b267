"""The machine a run measured, the versions installed and the commit: printed at the top
of every bench's output and kept in its `--json`, so figures can be compared (or not).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from tests.bench.common import ROOT

# every package a bench's figures depend on (those not installed are left out)
PACKAGES = (
    *("uvicorn", "uvloop", "httptools", "starlette", "orjson", "websockets", "picows"),
    *("redis", "asyncpg", "databases", "sqlalchemy", "python-socketio", "channels"),
    *("taskiq", "taskiq-redis", "fastapi", "sqlmodel", "pydantic", "joserfc", "playwright"),
)


def probe() -> dict[str, Any]:
    """CPU model and count, load average, Python and platform, versions, commit."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "load": [round(load, 2) for load in os.getloadavg()],  # 1, 5 and 15 minutes
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": commit(),
    }


def commit() -> str:
    """The commit measured, and the files of the server that differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "realtime", "handlers", "schema"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def describe(machine: dict[str, Any], packages: Sequence[str] = ()) -> str:
    """One line: `python 3.11.2, nproc 2 (<model>), load 0.10 0.48 0.36; code <commit>`,
    then the versions of `packages` (those installed) when some are named."""
    load = " ".join(f"{value:.2f}" for value in machine["load"])
    line = (
        f"python {machine['python']}, nproc {machine['nproc']} ({machine['cpu'] or 'CPU ?'}), "
        f"load {load}; code {machine['git']}"
    )
    found = [
        f"{name} {machine['versions'][name]}" for name in packages if name in machine["versions"]
    ]
    return line + (f"\n{', '.join(found)}" if found else "")

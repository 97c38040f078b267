"""The Node tools the suite runs (tsc, json-schema-to-typescript, openapi-typescript, the
AsyncAPI parser), installed from tests/npm's lock file with `npm ci` the first time a test
needs them. Node.js and npm are required: a missing one fails the test with how to get it,
it is never skipped."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NPM = Path(__file__).parent / "npm"
MODULES = NPM / "node_modules"
STAMP = MODULES / ".lock-sha256"


def node_tools() -> Path:
    """The node_modules folder, installed or refreshed when the lock file changed."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is not on PATH: install Node.js 20+ and npm (apt-get install nodejs npm)"
            )
    lock = hashlib.sha256((NPM / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != lock:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NPM,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NPM} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        STAMP.write_text(lock)
    return MODULES


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(node_tools() / ".bin" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_node(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a Node script with the tools' node_modules resolvable (NODE_PATH)."""
    env = {**os.environ, "NODE_PATH": str(node_tools())}
    return subprocess.run(
        ["node", "-e", script, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )

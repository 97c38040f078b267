"""The browser client realtime/static/realtime.js: its Node logic tests and its declarations.

tests/js/client.test.mjs plays the server with a fake WebSocket and a virtual clock (no
network); tests/js/types-check.ts uses realtime.d.ts the way an application would and
must compile under `tsc --strict` (its misuses are marked @ts-expect-error, so they must
fail to compile). A missing node fails these tests, never skips them.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.npmtools import run_tool

JS_TESTS = ROOT / "tests" / "js"
STATIC = ROOT / "realtime" / "static"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is required for the browser client's tests: install node (20 or later) "
            "and put it on PATH",
            pytrace=False,
        )
    return node


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {done.returncode}\n{done.stdout[-12000:]}\n{done.stderr[-4000:]}"


def test_client_logic_under_node() -> None:
    done = subprocess.run(
        [_node(), "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, _tail(done)
    assert "# fail 0" in done.stdout, _tail(done)


def test_declarations_type_check_strict() -> None:
    """tsc from tests/npm (tests/npmtools.py), on the declarations alone and on their use."""
    options = ("--strict", "--noEmit", "--target", "es2022", "--module", "esnext")
    for file in (STATIC / "realtime.d.ts", JS_TESTS / "types-check.ts"):
        done = run_tool("tsc", *options, "--moduleResolution", "bundler", str(file), cwd=ROOT)
        assert done.returncode == 0, _tail(done)

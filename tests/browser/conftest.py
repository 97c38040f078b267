"""Real Chromium (Debian's package) driven by Playwright, for the browser client's
end-to-end tests. Playwright's own browser download cannot work here, so the system
Chromium is launched by path; when it is missing and we are root, it is installed with
apt-get, else the test fails with how to install it (never a skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = os.environ.get("REALTIME_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "chromium"],
        ):
            subprocess.run(command, check=False, capture_output=True, timeout=900)
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: install Debian's package (apt-get install chromium) "
            "or point REALTIME_TEST_CHROMIUM at a Chromium binary"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped, not session-scoped: while Playwright's sync API is open it holds a
    running event loop in this thread, and every later test that calls asyncio.run would
    fail."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no shared storage) per test."""
    ctx = browser.new_context()
    try:
        yield ctx
    finally:
        ctx.close()

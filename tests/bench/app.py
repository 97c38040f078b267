"""The benchmarked server: the full realtime app plus the ceiling, in one app and process.

    uvicorn --factory tests.bench.app:create_bench_app

`/ws` is the full stack (authentication, permission check, rate limit, schema validation,
handler, bounded writer). `/bench/bare` is the ceiling of DESIGN.md "Performance budgets":
a bare Starlette WebSocket endpoint that decodes each frame with orjson and answers with
an envelope built from it, on the same uvicorn, in the same process.

Configured by the environment (the bench runner sets these):

- `BENCH_DEV_KEY_FILE`: the development issuer's key (the runner mints tokens with it);
- `BENCH_DATABASE_URL`: optional, else the embedded SQLite file next to the key;
- `BENCH_ABLATE`: optional, diagnostic ablations (tests/bench/ablations.py): a frame
  ablation becomes the app's `on_frame` (what a `/ws` frame means), a process one is set
  here; nothing patches realtime.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from realtime.app import create_app, load_handlers
from realtime.settings import Settings
from tests.bench import ablations
from tests.bench.bare import bare_endpoint
from tests.bench.common import ROOT

BARE_PATH = "/bench/bare"
FULL_PATH = "/ws"


def bench_settings(dev_key_file: str) -> Settings:
    """Defaults (never the developer's environment), files in the bench's temp dir, limits
    out of the way. Given by variable name, so a knob this version lacks is skipped."""
    workdir = Path(dev_key_file).parent
    values = {
        "REALTIME_DEV_KEY_FILE": dev_key_file,
        "REALTIME_EMBEDDED_DB": str(workdir / "bench.db"),
        "REALTIME_MIGRATIONS": str(ROOT / "migrations"),
        "REALTIME_PERMISSIONS": str(ROOT / "permissions.toml"),
        "REALTIME_DEV_USERS_FILE": str(ROOT / "dev-users.toml"),
        "REALTIME_RATE_LIMIT": "1e9",
        "REALTIME_RATE_BURST": str(10**9),
        "REALTIME_MAX_INFLIGHT": "1024",
        "REALTIME_SEND_QUEUE": "4096",
        "REALTIME_LOG_LEVEL": "warning",
    }
    if os.environ.get("BENCH_DATABASE_URL"):
        values["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    return Settings.from_mapping(values)


def create_bench_app() -> Starlette:
    on_frame = ablations.apply(os.environ.get(ablations.ENV, ""), load_handlers(("handlers",))[0])
    key_file = os.environ.get("BENCH_DEV_KEY_FILE") or str(
        Path(tempfile.mkdtemp(prefix="realtime-bench-")) / "dev-key.json"
    )
    app = create_app(bench_settings(key_file), load_handlers(("handlers",))[0], on_frame=on_frame)
    # same app, same lifespan: the ceiling is one more route next to /ws
    app.router.routes.append(WebSocketRoute(BARE_PATH, bare_endpoint))
    return app

"""The arrows point one way (docs/architecture.md): checked on the source, so a new import
that crosses a room's wall fails here, not in a review."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent
HANDLER_API = {"realtime", "realtime.exceptions"}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _ours(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def test_handlers_import_only_the_handler_api() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sorted((ROOT / "handlers").glob("*.py"))
        for line, module in _imports(path)
        if _ours(module, "realtime") and module not in HANDLER_API
    ]
    assert crossing == []


def test_the_framework_never_imports_the_application() -> None:
    crossing = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in sorted((ROOT / "realtime").rglob("*.py"))
        for line, module in _imports(path)
        if _ours(module, "handlers") or _ours(module, "schema") or _ours(module, "tests")
    ]
    assert crossing == []


def test_migrations_need_the_schema_only() -> None:
    env = ROOT / "migrations" / "env.py"
    assert [module for _, module in _imports(env) if _ours(module, "realtime")] == []


def test_the_handler_api_does_not_load_the_composition_root() -> None:
    """`import realtime` (what every handler module does) loads the declarations, not the
    lifespan with its database, migrations and auth back ends."""
    import subprocess
    import sys

    script = (
        "import sys, realtime\n"
        "print(sorted(m for m in ('realtime.lifespan', 'realtime.migrate', 'alembic')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_handlers_import_only_names_the_handler_api_exports() -> None:
    import realtime

    unexported = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}"
        for path in sorted((ROOT / "handlers").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "realtime" and node.level == 0
        for alias in node.names
        if alias.name not in realtime.__all__
    ]
    assert unexported == []

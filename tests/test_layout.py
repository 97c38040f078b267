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

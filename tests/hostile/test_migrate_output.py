"""Issue 11, item 14: `realtime migrate` said nothing on success. It now names each
migration it applied and the revision the database is at, or that nothing was left."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT
from tests.test_cli import realtime


def _heads() -> list[str]:
    return sorted(p.name.split("_", 1)[0] for p in (ROOT / "migrations" / "versions").glob("0*.py"))


def test_migrate_says_what_it_applied_then_that_nothing_was_left(tmp_path: Path) -> None:
    database = {"DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    revisions = _heads()
    first = realtime(tmp_path, "migrate", "--revision", revisions[1], **database)
    assert first.returncode == 0, first.stderr
    assert [line.split(":")[0] for line in first.stdout.splitlines()] == ["realtime"] * 3
    assert first.stdout.splitlines()[:2] == [
        f"realtime: applied {revisions[0]}: initial: projects and authors",
        f"realtime: applied {revisions[1]}: jobs: durable job records "
        "(owner, state, progress, result)",
    ]
    assert (
        first.stdout.splitlines()[-1] == f"realtime: database migrated to revision {revisions[1]}"
    )

    rest = realtime(tmp_path, "migrate", **database)
    lines = rest.stdout.splitlines()
    assert rest.returncode == 0, rest.stderr
    assert [line.split(":")[1].split()[-1] for line in lines[:-1]] == revisions[2:]
    assert lines[-1] == f"realtime: database migrated to revision {revisions[-1]}"

    again = realtime(tmp_path, "migrate", **database)
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout
        == f"realtime: database already at revision {revisions[-1]}: nothing to apply\n"
    )
    # control: --sql still writes the SQL script alone to stdout
    script = realtime(tmp_path, "migrate", "--sql", **{"DATABASE_URL": "sqlite:///unused.db"})
    assert script.returncode == 0 and "realtime:" not in script.stdout
    assert "CREATE TABLE projects" in script.stdout

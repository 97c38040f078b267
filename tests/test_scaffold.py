"""`realtime new-package` and `realtime packages`, run as a handler author would: in a copy
of the project, then the project's own checks (ruff, mypy, pytest) on what it wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _copy_project(target: Path) -> Path:
    """The tracked files of the project (what a fresh clone has), without .venv or caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    redis = os.environ.get("REALTIME_TEST_REDIS", "redis://127.0.0.1:6379")
    # PYTHONMALLOC set: `serve` need not execute itself again (realtime.cli)
    return {**env, "PYTHONPATH": str(project), "REALTIME_TEST_REDIS": redis, "PYTHONMALLOC": "malloc"}


def _run(project: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A command in the copy, with its own modules first on the path (not /work's)."""
    return subprocess.run(
        list(args), cwd=project, env=_env(project), capture_output=True, text=True, timeout=timeout
    )


def _realtime(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(project, sys.executable, "-m", "realtime.cli", *args)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy with three packages scaffolded: a new domain with a plain and a paginated
    package, and one added to an existing module (handlers/projects.py)."""
    copy = _copy_project(tmp_path_factory.mktemp("project"))
    for args in (
        ("notes.add", "--rest", "POST /notes"),
        ("notes.list", "--rest", "GET /notes", "--paginated", "--roles", "user,admin"),
        ("projects.archive", "--rest", "POST /projects/{id}/archive 200", "--audited"),
        ("notes.ping",),  # socket only
    ):
        done = _realtime(copy, "new-package", *args)
        assert done.returncode == 0, done.stderr
    for args in (("notes.{id}",), ("room.{room}", "--publish", "user")):
        done = _realtime(copy, "new-topic", *args)
        assert done.returncode == 0, done.stderr
    return copy


def test_it_writes_each_part_where_the_layout_puts_it(project: Path) -> None:
    done = _realtime(project, "new-package", "notes.share", "--rest", "POST /notes/{id}/share")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:6] == [
        "changed schema/notes.py",
        "changed handlers/notes.py",
        "changed permissions.toml",
        "changed tests/permissions.toml",  # the test suite's own: its apps serve the module
        "wrote tests/test_notes_share.py",
        "package notes.share: id 104, roles user, REST POST /notes/{id}/share",
    ]
    assert "tests/test_notes_share.py" in done.stdout.splitlines()[-1]  # what to run next
    assert '"notes.share" = ["user"]\n' in (project / "permissions.toml").read_text()
    assert '"id": {"type": "integer", "minimum": 1}' in (project / "schema/notes.py").read_text()


def test_the_projects_own_checks_pass_on_what_it_wrote(project: Path) -> None:
    ruff = _run(project, str(BIN / "ruff"), "check", "realtime", "handlers", "schema", "tests")
    assert ruff.returncode == 0, ruff.stdout
    mypy = _run(project, str(BIN / "mypy"), "--cache-dir", str(project / ".mypy_cache"))
    assert mypy.returncode == 0, mypy.stdout
    tests = [f"tests/test_{n}.py" for n in ("notes_add", "notes_list", "projects_archive")]
    tests += ["tests/test_notes_ping.py", "tests/test_topic_notes_id.py", "tests/test_topic_room_room.py"]
    pytest_run = _run(project, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests)
    assert pytest_run.returncode == 0, pytest_run.stdout[-3000:]
    assert "14 passed" in pytest_run.stdout, pytest_run.stdout[-3000:]


def test_they_reach_openapi_the_typed_client_and_keep_the_projects_tests_green(
    project: Path,
) -> None:
    """What the scaffolder did not write by hand comes from the catalog: the OpenAPI
    operation, the TypeScript types; and the project's own tests still pass with them."""
    from tests.npmtools import node_tools

    json2ts = str(node_tools() / ".bin" / "json2ts")
    types = _realtime(project, "client-types", "--json2ts", json2ts, "-o", "types.d.ts")
    assert types.returncode == 0, types.stderr
    assert '"notes.add"' in (project / "types.d.ts").read_text()
    spec = _run(
        project,
        sys.executable,
        "-c",
        "from starlette.testclient import TestClient\n"
        "from realtime.app import create_app\n"
        "from realtime.settings import Settings\n"
        "s = Settings.from_mapping({'REALTIME_EMBEDDED_DB': 'spec.db'})\n"
        "with TestClient(create_app(s)) as client:\n"
        "    paths = client.get('/openapi.json').json()['paths']\n"
        "print(paths['/notes']['post']['operationId'], paths['/notes']['get']['operationId'])",
    )
    assert spec.stdout.split() == ["notes.add", "notes.list"], spec.stderr
    own = ["tests/test_layout.py", "tests/test_rest.py", "tests/test_openapi.py", "-k", "not schemathesis"]
    done = _run(project, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *own)
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_table_shows_them_and_the_free_ids(project: Path) -> None:
    done = _realtime(project, "packages")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line.split() for line in done.stdout.splitlines()[1:] if line}
    assert rows["notes.add"][:6] == ["100", "notes.add", "user", "ws+rest", "task", "-"]
    assert rows["notes.list"][:6] == ["101", "notes.list", "admin,user", "ws+rest", "task", "yes"]
    assert rows["notes.ping"][:4] == ["103", "notes.ping", "user", "ws"]
    assert rows["echo"][4] == "inline"
    assert rows["projects.archive"][6] == "yes"  # --audited
    free = next(line for line in done.stdout.splitlines() if line.startswith("free"))
    assert free.endswith(" (9000-9999 and 42 are the framework's)")
    ranges = [r.split("-") for r in free.split(": ")[1].split(" (")[0].split(", ")]
    free_ids = {i for r in ranges for i in range(int(r[0]), int(r[-1]) + 1)}
    assert {4, 43, 99, 8999} <= free_ids  # between the shipped blocks, and up to 8999
    assert not free_ids & {1, 10, 40, 42, 100, 101, 102, 103, 9000}


def test_a_second_scaffold_of_a_name_is_refused_and_writes_nothing(project: Path) -> None:
    before = {p: p.read_bytes() for p in project.rglob("*.py")}
    permissions = (project / "permissions.toml").read_bytes()
    done = _realtime(project, "new-package", "notes.add")
    assert done.returncode == 2
    assert done.stderr == "realtime new-package: package 'notes.add' exists (id 100)\n"
    taken = _realtime(project, "new-package", "notes.other", "--id", "10")
    assert taken.stderr == "realtime new-package: id 10 is taken by projects.create\n"
    route = _realtime(project, "new-package", "notes.again", "--rest", "POST /notes")
    assert route.stderr == "realtime new-package: POST /notes is the route of notes.add\n"
    reserved = _realtime(project, "new-package", "notes.other", "--id", "9001")
    assert "id 9001 is not an application id" in reserved.stderr
    assert {p: p.read_bytes() for p in project.rglob("*.py")} == before
    assert (project / "permissions.toml").read_bytes() == permissions


def test_start_up_refuses_an_id_in_the_frameworks_range(tmp_path: Path) -> None:
    copy = _copy_project(tmp_path)
    (copy / "handlers/bad.py").write_text(
        "from realtime import Package\n\n\nasync def f(ctx, data):\n    return data\n\n\n"
        'PACKAGES = [Package(9001, "bad.one", f)]\n'
    )
    for command in ("packages", "serve"):
        done = _realtime(copy, command)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.strip().splitlines() == [
            "realtime: configuration error: package bad.one: id 9001 is not an application "
            "id (1-8999 except 42; 9000-9999 and 42 are the framework's)"
        ]


def test_a_package_left_out_of_permissions_is_reported(tmp_path: Path) -> None:
    copy = _copy_project(tmp_path)
    (copy / "handlers/extra.py").write_text(
        "from realtime import Package\n\n\nasync def f(ctx, data):\n    return data\n\n\n"
        'PACKAGES = [Package(500, "extra.one", f)]\n'
    )
    done = _realtime(copy, "packages")
    assert done.returncode == 0, done.stderr
    assert "not in permissions.toml: extra.one (nobody may call it)" in done.stdout
    assert "extra.one" in next(line for line in done.stdout.splitlines() if "500" in line)


def test_new_topic_writes_a_denying_authorizer_its_roles_and_a_test(project: Path) -> None:
    handlers = (project / "handlers/room.py").read_text()
    assert 'TOPICS = [Topic("room.{room}", may_room)]' in handlers
    assert "    return False\n" in handlers  # denies until its rule is written
    notes = (project / "handlers/notes.py").read_text()  # added to a module with packages
    assert 'TOPICS = [Topic("notes.{id}", may_notes)]' in notes and "PACKAGES = [" in notes
    permissions = (project / "permissions.toml").read_text()
    assert '[topics."room.{room}"]\nsubscribe = ["user"]\npresence = ["user"]\npublish = ["user"]\n' in permissions
    # after the other patterns (tried in order), before [grants]
    assert permissions.index('[topics."user.{sub}"]') < permissions.index('[topics."notes.{id}"]')
    assert permissions.index('[topics."room.{room}"]') < permissions.index("[grants]")
    again = _realtime(project, "new-topic", "room.{room}")
    assert again.returncode == 2
    assert again.stderr == (
        "realtime new-topic: topic 'room.{room}' exists (permissions.toml or a TOPICS list)\n"
    )
    bad = _realtime(project, "new-topic", "room.{a}.{a}")
    assert bad.returncode == 2 and "a placeholder is named twice" in bad.stderr


def test_an_annotated_list_is_extended_not_replaced(tmp_path: Path) -> None:
    """`PACKAGES: list[Package] = [...]` and `TOPICS: list[Topic] = [...]` keep what they
    held: a second binding would drop a package, or silently open a topic."""
    copy = _copy_project(tmp_path)
    (copy / "handlers/ann.py").write_text(
        "from realtime import Context, JSONObject, Package, Topic\n\n\n"
        "async def one(ctx: Context, data: JSONObject) -> JSONObject:\n    return data\n\n\n"
        "async def may(ctx: Context, params: dict[str, str]) -> bool:\n    return True\n\n\n"
        'PACKAGES: list[Package] = [\n    Package(600, "ann.one", one),\n]\n'
        'TOPICS: list[Topic] = [Topic("ann.{id}", may)]\n'
    )
    permissions = copy / "permissions.toml"
    text = permissions.read_text().replace("[packages]\n", '[packages]\n"ann.one" = ["user"]\n')
    permissions.write_text(text + '\n[topics."ann.{id}"]\nsubscribe = ["user"]\n')
    assert _realtime(copy, "new-package", "ann.two").returncode == 0
    assert _realtime(copy, "new-topic", "ann.{id}.more").returncode == 0
    source = (copy / "handlers/ann.py").read_text()
    assert source.count("PACKAGES") == 1 and source.count("TOPICS: list[Topic]") == 1
    assert 'TOPICS += [Topic("ann.{id}.more", may_ann)]' in source
    listed = _realtime(copy, "packages").stdout
    assert " ann.one " in listed and " ann.two " in listed


def test_what_cannot_be_written_safely_is_refused_in_one_line(tmp_path: Path) -> None:
    copy = _copy_project(tmp_path)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    cases = {
        ("notes.health", "--rest", "GET /health"): "GET /health is served already (/health)",
        ("projects.fetch", "--rest", "GET /projects/{pid}"): (
            "GET /projects/{pid} is the route of projects.get"
        ),
        ("notes.add", "--roles", 'it"s'): "--roles: 'it\"s' is not a role name",
        ("notes." + "a" * 90,): "a line would exceed 100 characters",
    }
    for args, message in cases.items():
        done = _realtime(copy, "new-package", *args)
        assert done.returncode == 2, (args, done.stdout)
        assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    shadowed = _realtime(copy, "new-topic", "project.*")
    assert shadowed.returncode == 2
    assert "'project.{id}' comes first in permissions.toml" in shadowed.stderr
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    (copy / "handlers/__init__.py").write_text("PACKAGES: list[object] = []\n")
    listed = _realtime(copy, "new-package", "notes.add")
    assert listed.returncode == 2 and "lists PACKAGES itself" in listed.stderr

"""`realtime new-package`: write what a package needs where the layout puts it.

For `notes.add` that is the handler in `handlers/notes.py` (added to the module if it
exists), its JSON Schemas in `schema/notes.py`, its roles in `permissions.toml`'s
[packages] table and `tests/test_notes_add.py`, which calls it over both doors. Nothing
else registers it: every module of `handlers/` is served (realtime.app discovers them).
The files are edited as text, never re-formatted: what was there stays byte for byte,
and what is added passes the project's ruff and mypy as it is.
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from realtime.exceptions import ConfigError
from realtime.packages import SCAFFOLD_FIRST_ID, Catalog, application_id
from realtime.types import Roles

NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PATH = re.compile(r"^(/[A-Za-z0-9_.~-]+|/\{[a-z_][a-z0-9_]*\})+$")
PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
LINE_LENGTH = 100  # pyproject's [tool.ruff] line-length
BUILTINS = frozenset(dir(builtins))


class ScaffoldError(ConfigError):
    """What `new-package` refuses, in one line."""


@dataclass(frozen=True)
class Project:
    """Where a project keeps its parts (run the commands in its root)."""

    root: Path
    handlers_module: str = "handlers"
    permissions_file: str = "permissions.toml"

    @property
    def handlers(self) -> Path:
        return self.root / self.handlers_module.replace(".", "/")

    @property
    def schema(self) -> Path:
        return self.root / "schema"

    @property
    def tests(self) -> Path:
        return self.root / "tests"

    @property
    def permissions(self) -> Path:
        return self.root / self.permissions_file

    def check(self) -> None:
        for needed in (self.handlers / "__init__.py", self.schema, self.permissions):
            if not needed.exists():
                raise ScaffoldError(f"{needed} is missing: run this in the project's root")
        init = self.handlers / "__init__.py"
        if "PACKAGES" in _top_level_names(init.read_text()):
            # realtime.app then serves that list only, and a new module would not be
            raise ScaffoldError(
                f"{init} lists PACKAGES itself: remove the list (every module of "
                f"{self.handlers_module}/ is then served) or add the package by hand"
            )

    def permission_files(self) -> list[Path]:
        """The project's permissions.toml, and the test suite's own when it keeps one
        (tests/permissions.toml): a new topic missing there would stop every test's app."""
        suite = self.tests / "permissions.toml"
        if suite.exists() and suite != self.permissions:
            return [self.permissions, suite]
        return [self.permissions]

    def shown(self, path: Path) -> str:
        """`path` as the report names it: relative to the project where it is inside."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    status: int

    @classmethod
    def parse(cls, text: str) -> Route:
        parts = text.split()
        if len(parts) not in (2, 3) or parts[0].upper() not in METHODS:
            raise ScaffoldError(f'--rest {text!r}: expected "METHOD /path [status]"')
        if not PATH.match(parts[1]):
            raise ScaffoldError(f"--rest {text!r}: {parts[1]!r} is not a path like /notes/{{id}}")
        status = parts[2] if len(parts) == 3 else ("201" if parts[0].upper() == "POST" else "200")
        if not status.isdigit() or not 200 <= int(status) < 300:
            raise ScaffoldError(f"--rest {text!r}: the status must be a 2xx code")
        return cls(parts[0].upper(), parts[1], int(status))

    @property
    def parameters(self) -> list[str]:
        return PARAMETER.findall(self.path)


@dataclass(frozen=True)
class Spec:
    """One package to write."""

    name: str
    pkg_id: int
    roles: tuple[str, ...]
    route: Route | None
    paginated: bool
    audited: bool = False

    @property
    def domain(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def action(self) -> str:
        return self.name.split(".", 1)[1].replace(".", "_")

    @property
    def constant(self) -> str:
        return self.action.upper()


# (methods or None for any, path) of every route the app serves besides packages'
ServedRoute = tuple[frozenset[str] | None, str]


def plan(
    catalog: Catalog,
    name: str,
    *,
    rest: str | None = None,
    paginated: bool = False,
    roles: str = "user",
    pkg_id: int | None = None,
    served: Collection[ServedRoute] = (),
    audited: bool = False,
) -> Spec:
    """Check the request against the catalog; the package to write, or ScaffoldError."""
    if not NAME.match(name) or any(keyword.iskeyword(part) for part in name.split(".")):
        raise ScaffoldError(f"{name!r} is not a package name like notes.add (lowercase, dotted)")
    if name in catalog.by_name:
        raise ScaffoldError(f"package {name!r} exists (id {catalog.by_name[name].id})")
    route = Route.parse(rest) if rest else None
    if route is not None:
        _check_route(catalog, route, served)
    chosen = _free_id(catalog) if pkg_id is None else pkg_id
    if not application_id(chosen):
        raise ScaffoldError(f"id {chosen} is not an application id (1-8999 except 42)")
    if chosen in catalog.by_id:
        raise ScaffoldError(f"id {chosen} is taken by {catalog.by_id[chosen].name}")
    return Spec(name, chosen, _roles(roles, "--roles"), route, paginated, audited)


def _check_route(catalog: Catalog, route: Route, served: Collection[ServedRoute]) -> None:
    """Refuse a route another package or the framework serves, parameters' names aside
    (`/projects/{pid}` is `/projects/{id}`)."""
    wanted = _template(route.path)
    for package in catalog:
        rest = package.rest
        if rest and rest.method == route.method and _template(rest.path) == wanted:
            raise ScaffoldError(f"{route.method} {route.path} is the route of {package.name}")
    for methods, path in served:
        if _template(path) == wanted and (methods is None or route.method in methods):
            raise ScaffoldError(f"{route.method} {route.path} is served already ({path})")


def _template(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


TEST_SUITE_IDS = range(900, 1000)


def _free_id(catalog: Catalog) -> int:
    for first, last in catalog.free_ids():
        for pkg_id in range(max(first, SCAFFOLD_FIRST_ID), last + 1):
            if pkg_id not in TEST_SUITE_IDS:
                return pkg_id
    raise ScaffoldError("no application id is free")


def write(project: Project, spec: Spec) -> list[str]:
    """Write the package; returns one line per file written or changed."""
    project.check()
    handler_file = project.handlers / f"{spec.domain}.py"
    schema_file = project.schema / f"{spec.domain}.py"
    test_file = project.tests / f"test_{spec.domain}_{spec.action}.py"
    if test_file.exists():
        raise ScaffoldError(f"{test_file} exists")
    function = _function_name(handler_file, spec)
    # every check first, then every write: a refusal leaves nothing half-written
    schema_text = _schema_text(schema_file, spec)
    handler_text = _handler_text(handler_file, spec, function)
    permissions = [(p, _permissions_text(p, spec)) for p in project.permission_files()]
    for path, text in ((schema_file, schema_text), (handler_file, handler_text)):
        _fits(project, path, text)
    done = []
    for path, text in (
        (schema_file, schema_text),
        (handler_file, handler_text),
        *permissions,
        (test_file, _test_text(project, spec)),
    ):
        done.append(f"{'changed' if path.exists() else 'wrote'} {project.shown(path)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return done


def _fits(project: Project, path: Path, text: str) -> None:
    """Every line written within the project's line length (ruff's E501), or nothing."""
    before = set(path.read_text().splitlines()) if path.exists() else set()
    if any(len(line) > LINE_LENGTH for line in text.splitlines() if line not in before):
        raise ScaffoldError(
            f"{project.shown(path)}: a line would exceed {LINE_LENGTH} characters: "
            "choose a shorter name or path"
        )


# -- the handler module ---------------------------------------------------------------


def _function_name(handler_file: Path, spec: Spec) -> str:
    taken = _top_level_names(handler_file.read_text()) if handler_file.exists() else set()
    for candidate in (spec.action, f"{spec.action}_{spec.domain}"):
        if candidate not in taken and candidate not in BUILTINS:
            return candidate
    raise ScaffoldError(f"{handler_file} already defines {spec.action} and {candidate}")


def _top_level_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _handler_code(spec: Spec, function: str) -> str:
    if spec.paginated:
        return (
            f"async def {function}(ctx: Context, data: JSONObject) -> Page:\n"
            f'    """{spec.name}: one page of items (`data` has page and per_page)."""\n'
            "    # replace this body, and the test that checks what it answers\n"
            "    items: list[JSONObject] = []\n"
            "    return Page(items, len(items))\n"
        )
    return (
        f"async def {function}(ctx: Context, data: JSONObject) -> JSONObject:\n"
        f'    """{spec.name}: what it does, for the package table and OpenAPI."""\n'
        "    # replace this body, and the test that checks what it answers\n"
        '    return {"by": ctx.principal.sub, **data}\n'
    )


def _package_code(spec: Spec, function: str, indent: str) -> str:
    lines = [
        f"{spec.pkg_id},",
        f'"{spec.name}",',
        f"{function},",
        f"schema={spec.constant}_REQUEST,",
        f"response_schema={spec.constant}_RESPONSE,",
    ]
    if spec.route is not None:
        route = spec.route
        lines.append(f'rest=Rest("{route.method}", "{route.path}", {route.status}),')
    if spec.paginated:
        lines.append("paginated=True,")
    if spec.audited:
        lines.append("audited=True,")
    lines.append(f'description="{spec.name}: say what it does.",')
    inner = indent + "    "
    return f"{indent}Package(\n" + "".join(f"{inner}{line}\n" for line in lines) + f"{indent}),\n"


def _api_names(spec: Spec) -> list[str]:
    names = ["Context", "JSONObject", "Package"]
    if spec.paginated:
        names.append("Page")
    if spec.route is not None:
        names.append("Rest")
    return names


def _handler_text(handler_file: Path, spec: Spec, function: str) -> str:
    schema_module = f"schema.{spec.domain}"
    schema_names = [f"{spec.constant}_REQUEST", f"{spec.constant}_RESPONSE"]
    if not handler_file.exists():
        imports = _from_import("realtime", _api_names(spec)) + _from_import(
            schema_module, schema_names
        )
        return (
            f'"""The {spec.domain}.* packages."""\n\n'
            "from __future__ import annotations\n\n"
            f"{imports}\n\n"
            f"{_handler_code(spec, function)}\n\n"
            f"PACKAGES = [\n{_package_code(spec, function, '    ')}]\n"
        )
    source = handler_file.read_text()
    source = _merge_import(source, "realtime", _api_names(spec))
    source = _merge_import(source, schema_module, schema_names)
    return _add_to_packages(source, spec, function, handler_file)


def _add_to_packages(source: str, spec: Spec, function: str, handler_file: Path) -> str:
    """Insert the function before `PACKAGES = [...]` and the Package at the list's end;
    without such a list, append both."""
    lines = source.splitlines(keepends=True)
    code = _handler_code(spec, function)
    node = _binding(source, "PACKAGES", handler_file)
    if node is not None:
        value = node.value
        assert value is not None
        closing = lines[(value.end_lineno or 0) - 1]
        if isinstance(value, ast.List) and closing.strip() == "]":
            end = (value.end_lineno or 0) - 1
            lines.insert(end, _package_code(spec, function, "    "))
        else:  # a list written otherwise: extend it after its statement
            package = _package_code(spec, function, "    ")
            lines.insert(node.end_lineno or 0, f"PACKAGES += [\n{package}]\n")
        lines.insert(node.lineno - 1, code + "\n\n")
        return "".join(lines)
    ending = "" if source.endswith("\n") else "\n"
    package = _package_code(spec, function, "    ")
    return source + ending + f"\n\n{code}\n\nPACKAGES = [\n{package}]\n"


def _binding(source: str, name: str, path: Path) -> ast.Assign | ast.AnnAssign | None:
    """The module's last top-level `name = ...` (or `name: T = ...`); None if it binds
    no `name` at all. Bound some other way (an import, a loop), it cannot be extended
    safely: a second `name = [...]` would silently replace the first."""
    found: ast.Assign | ast.AnnAssign | None = None
    for node in ast.parse(source).body:
        if _binds(node, name):
            assert isinstance(node, ast.Assign | ast.AnnAssign)
            found = node
    if found is None and name in _top_level_names(source):
        raise ScaffoldError(f"{path} binds {name} in a way this cannot extend: add it by hand")
    return found


def _binds(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.Assign):
        return any(_is_name(target, name) for target in node.targets)
    return isinstance(node, ast.AnnAssign) and _is_name(node.target, name) and bool(node.value)


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


# -- imports, as ruff's isort writes them ----------------------------------------------


def _member_key(name: str) -> tuple[int, str]:
    # isort's order-by-type: CONSTANTS, then Classes, then functions, each case-blind
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, name.lower()


def _from_import(module: str, names: list[str]) -> str:
    members = sorted(set(names), key=_member_key)
    line = f"from {module} import {', '.join(members)}\n"
    if len(line) - 1 <= LINE_LENGTH:
        return line
    return f"from {module} import (\n" + "".join(f"    {m},\n" for m in members) + ")\n"


def _merge_import(source: str, module: str, names: list[str]) -> str:
    """`from module import names` merged into the module's own line, or added to the
    last import block in module order."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module]
    for node in imports:
        if node.module == module and all(alias.asname is None for alias in node.names):
            present = [alias.name for alias in node.names]
            text = _from_import(module, [*present, *names])
            lines[node.lineno - 1 : node.end_lineno] = [text]
            return "".join(lines)
    if not imports:
        raise ScaffoldError(f"cannot place `from {module} import ...`: the module has no imports")
    block = _last_block(imports, lines)
    after = [n for n in block if _module_key(n.module or "") <= _module_key(module)]
    where = (after[-1].end_lineno or 0) if after else block[0].lineno - 1
    lines.insert(where, _from_import(module, names))
    return "".join(lines)


def _module_key(module: str) -> str:
    return module.lower()


def _last_block(imports: list[ast.ImportFrom], lines: list[str]) -> list[ast.ImportFrom]:
    """The last run of imports not separated by a blank line (the first-party section)."""
    block = [imports[-1]]
    for node in reversed(imports[:-1]):
        between = lines[(node.end_lineno or 0) : block[0].lineno - 1]
        if any(not line.strip() for line in between):
            break
        block.insert(0, node)
    return block


# -- the schema module, the permissions line, the test ---------------------------------


def _schema_code(spec: Spec) -> str:
    parameters = spec.route.parameters if spec.route else []
    request = [f"{spec.constant}_REQUEST = {{", '    "type": "object",']
    if parameters:  # path parameters arrive in `data` like the body's fields
        request.append('    "properties": {')
        request += [f'        "{p}": {_parameter_schema(p)},' for p in parameters]
        request.append("    },")
        required = ", ".join(f'"{p}"' for p in parameters)
        request.append(f'    "required": [{required}],')
    else:
        request.append('    "properties": {},')
    request += ['    "additionalProperties": False,', "}"]
    if spec.paginated:
        response = [f'{spec.constant}_RESPONSE = {{"type": "object"}}  # one item of the page']
    else:
        response = [
            f"{spec.constant}_RESPONSE = {{",
            '    "type": "object",',
            '    "properties": {"by": {"type": "string"}},',
            '    "required": ["by"],',
            "}",
        ]
    return "\n".join([f"# {spec.name}", *request, *response]) + "\n"


def _parameter_schema(name: str) -> str:
    if name == "id" or name.endswith("_id"):
        return '{"type": "integer", "minimum": 1}'
    return '{"type": "string", "minLength": 1, "maxLength": 200}'


def _schema_text(schema_file: Path, spec: Spec) -> str:
    code = _schema_code(spec)
    if not schema_file.exists():
        return f'"""JSON Schemas of the {spec.domain}.* packages."""\n\n{code}'
    source = schema_file.read_text()
    taken = _top_level_names(source)
    for name in (f"{spec.constant}_REQUEST", f"{spec.constant}_RESPONSE"):
        if name in taken:
            raise ScaffoldError(f"{schema_file} already defines {name}")
    ending = "" if source.endswith("\n") else "\n"
    return source + ending + "\n" + code


def _permissions_text(path: Path, spec: Spec) -> str:
    """The roles line added at the end of the [packages] table, before what follows it."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "[packages]")
    except StopIteration:
        raise ScaffoldError(f"{path} has no [packages] table") from None
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip()[0] == "#"):
        end -= 1
    roles = ", ".join(f'"{role}"' for role in spec.roles)
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines.insert(end, f'"{spec.name}" = [{roles}]\n')
    changed = "".join(lines)
    if tomllib.loads(changed).get("packages", {}).get(spec.name) != list(spec.roles):
        raise ScaffoldError(f"{path}: could not add {spec.name!r} to [packages]")
    return changed


def _example(spec: Spec) -> dict[str, int | str]:
    params = spec.route.parameters if spec.route else []
    return {p: (7 if p == "id" or p.endswith("_id") else "x") for p in params}


def _test_text(project: Project, spec: Spec) -> str:
    data = _example(spec)
    roles = [role for role in spec.roles if role != "*"] or ["user"]
    answer = "[]" if spec.paginated else json.dumps({"by": "alice", **data})
    field = "data" if spec.paginated else None
    lines = [
        f'"""{spec.name} on both doors (written by `realtime new-package`: keep it true',
        'when you write the handler\'s body)."""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Iterator",
        "from pathlib import Path",
        "",
        "import pytest",
        "from starlette.testclient import TestClient",
        "",
        "from realtime.app import create_app",
        "from realtime.auth.dev import DevIssuer",
        "from realtime.protocol import Status",
        "from tests.conftest import ROOT, make_settings",
        "from tests.helpers import auth_header, call",
        "",
        f"PKG_ID = {spec.pkg_id}",
        f"DATA = {json.dumps(data)}",
        "",
        "",
        "@pytest.fixture",
        "def app(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:",
        '    """The application as it is served: its handlers, the project\'s permissions."""',
        "    settings = make_settings(",
        f'        tmp_path, handlers=("{project.handlers_module}",), '
        f'permissions_file=str(ROOT / "{project.permissions_file}")',
        "    )",
        "    issuer = DevIssuer.load_or_create(",
        "        settings.dev_key_file,",
        "        audience=settings.keycloak_audience,",
        "        client_id=settings.keycloak_client_id,",
        "    )",
        f'    token = issuer.mint("alice", {json.dumps(roles)}, tenant="acme")',
        "    with TestClient(create_app(settings)) as client:",
        "        yield client, token",
        "",
        "",
        "def test_on_the_socket(app: tuple[TestClient, str]) -> None:",
        "    client, token = app",
        '    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:',
        "        answer = call(ws, PKG_ID, DATA)",
        '        assert answer["status_code"] == Status.OK, answer',
        f'        assert answer["data"] == {answer}',
        '        refused = call(ws, PKG_ID, {**DATA, "not_in_the_schema": 1})',
        '        assert refused["status_code"] == Status.INVALID_DATA',
    ]
    lines += _rest_test(spec, data, answer, field)
    lines += [
        "",
        "",
        "def test_listed_with_its_roles(app: tuple[TestClient, str]) -> None:",
        "    client, _ = app",
        '    listed = {p["name"]: p for p in client.get("/packages").json()}',
        f'    assert listed["{spec.name}"]["pkg_id"] == PKG_ID',
        f'    assert sorted(listed["{spec.name}"]["roles"]) == {json.dumps(sorted(spec.roles))}',
        "",
    ]
    return "\n".join(lines)


def _rest_test(spec: Spec, data: dict[str, int | str], answer: str, field: str | None) -> list[str]:
    if spec.route is None:
        return [
            "",
            "",
            "def test_not_on_rest(app: tuple[TestClient, str]) -> None:",
            "    client, _ = app",
            '    spec = client.get("/openapi.json").json()',
            '    operations = [op for item in spec["paths"].values() for op in item.values()]',
            f'    assert all(op.get("operationId") != "{spec.name}" for op in operations)',
        ]
    route = spec.route
    path = PARAMETER.sub(lambda m: str(data[m.group(1)]), route.path)
    body = ", json={}" if route.method in ("POST", "PUT", "PATCH") else ""
    body_check = f'response.json()["{field}"]' if field else "response.json()"
    return [
        "",
        "",
        "def test_over_rest(app: tuple[TestClient, str]) -> None:",
        "    client, token = app",
        f'    response = client.request("{route.method}", "{path}"{body}, '
        "headers=auth_header(token))",
        f"    assert response.status_code == {route.status}, response.text",
        f"    assert {body_check} == {answer}",
    ]


def next_steps(spec: Spec) -> list[str]:
    test = f"tests/test_{spec.domain}_{spec.action}.py"
    return [
        f"package {spec.name}: id {spec.pkg_id}, roles {', '.join(spec.roles)}"
        + (f", REST {spec.route.method} {spec.route.path}" if spec.route else ", socket only"),
        "next:",
        f"  1. write the handler's body in handlers/{spec.domain}.py and its schemas in "
        f"schema/{spec.domain}.py",
        f"  2. make {test} check what it answers now",
        f"  3. .venv/bin/ruff check realtime handlers schema tests && .venv/bin/mypy "
        f"&& .venv/bin/python -m pytest {test}",
    ]


# -- `realtime new-topic PATTERN` -----------------------------------------------------

TOPIC_DOMAIN = re.compile(r"^([a-z][a-z0-9_]*)\.")


@dataclass(frozen=True)
class TopicSpec:
    """One topic pattern to write: its authorizer, its roles, its test."""

    pattern: str
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]

    @property
    def domain(self) -> str:
        found = TOPIC_DOMAIN.match(self.pattern)
        assert found is not None
        return found.group(1)

    @property
    def params(self) -> list[str]:
        return [p for p in PARAMETER.findall(self.pattern) if p not in ("sub", "tenant")]

    @property
    def slug(self) -> str:
        """The test file's name part: notes.{id}.comments -> notes_id_comments."""
        return re.sub(r"[^a-z0-9]+", "_", self.pattern.lower()).strip("_")

    def example(self) -> str:
        """A topic the pattern matches for the test's caller (alice of tenant acme)."""
        values = {"sub": "alice", "tenant": "acme"}
        topic = re.sub(
            r"\{([A-Za-z_][A-Za-z0-9_]*)\}",
            lambda m: values.get(m.group(1), "7" if m.group(1).endswith("id") else "x"),
            self.pattern,
        )
        return topic.replace("*", "x")


def plan_topic(
    table: Mapping[str, Mapping[str, Roles]],
    declared: Collection[str],
    pattern: str,
    *,
    roles: str = "user",
    publish: str = "",
) -> TopicSpec:
    """Check the pattern against permissions.toml's [topics] and the declared Topics."""
    from realtime.topics import TopicPermissions

    if not TOPIC_DOMAIN.match(pattern):
        raise ScaffoldError(f"{pattern!r}: a pattern starts with its domain, like notes.{{id}}")
    try:
        TopicPermissions({pattern: {}}, [])
    except ConfigError as error:
        raise ScaffoldError(str(error)) from None
    if pattern in table or pattern in declared:
        raise ScaffoldError(f"topic {pattern!r} exists (permissions.toml or a TOPICS list)")
    subscribe = _roles(roles, "--roles")
    spec = TopicSpec(pattern, subscribe, _roles(publish, "--publish") if publish else ())
    shadow = _shadowing(table, spec)
    if shadow is not None:
        raise ScaffoldError(
            f"{shadow!r} comes first in permissions.toml and matches {spec.example()!r}: "
            f"{pattern!r} would never decide (patterns are tried in order)"
        )
    return spec


def _shadowing(table: Mapping[str, Mapping[str, Roles]], spec: TopicSpec) -> str | None:
    """An existing pattern that decides for the new one's example topic (the test's
    caller, alice of acme), so the new table would never be reached."""
    from realtime.auth.principal import Principal
    from realtime.topics import TopicPermissions

    caller = Principal(
        sub="alice",
        username=None,
        email=None,
        name=None,
        realm_roles=frozenset(),
        client_roles={},
        tenant_id="acme",
        expires_at=0,
        raw_claims={},
    )
    existing = TopicPermissions({k: dict(v) for k, v in table.items()}, [])
    return existing.first_pattern(caller, spec.example())


ROLE = re.compile(r"^(\*|[A-Za-z0-9_.:@/-]{1,100})$")


def _roles(text: str, option: str) -> tuple[str, ...]:
    found = tuple(role.strip() for role in text.split(",") if role.strip())
    if not found:
        raise ScaffoldError(f"{option} names no role (use * for any authenticated caller)")
    for role in found:
        if not ROLE.match(role):
            raise ScaffoldError(f"{option}: {role!r} is not a role name (letters, digits, _.:@/-)")
    return found


def write_topic(project: Project, spec: TopicSpec) -> list[str]:
    project.check()
    handler_file = project.handlers / f"{spec.domain}.py"
    test_file = project.tests / f"test_topic_{spec.slug}.py"
    if test_file.exists():
        raise ScaffoldError(f"{test_file} exists")
    taken = _top_level_names(handler_file.read_text()) if handler_file.exists() else set()
    function = next(
        (n for n in (f"may_{spec.domain}", f"may_{spec.domain}_topic") if n not in taken), None
    )
    if function is None:
        raise ScaffoldError(f"{handler_file} already defines may_{spec.domain}")
    handler_text = _topic_handler_text(handler_file, spec, function)
    permissions = [(p, _topic_permissions_text(p, spec)) for p in project.permission_files()]
    done = []
    for path, text in (
        (handler_file, handler_text),
        *permissions,
        (test_file, _topic_test_text(project, spec)),
    ):
        done.append(f"{'changed' if path.exists() else 'wrote'} {project.shown(path)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return done


def _authorizer_code(spec: TopicSpec, function: str) -> str:
    shown = ", ".join(f'"{p}": ...' for p in spec.params)
    return (
        f"async def {function}(ctx: Context, params: dict[str, str]) -> bool:\n"
        f'    """Who may subscribe to `{spec.pattern}` (and list its presence, read its history),\n'
        "    once permissions.toml's roles allowed it: True allows, False is PERMISSION_DENIED,\n"
        f'    raising NotFound hides the topic. `params` holds {{{shown}}}."""\n'
        "    # deny until the rule is written here, and in the test next to this module's\n"
        "    return False\n"
    )


def _topic_handler_text(handler_file: Path, spec: TopicSpec, function: str) -> str:
    code = _authorizer_code(spec, function)
    entry = f'Topic("{spec.pattern}", {function})'
    if not handler_file.exists():
        return (
            f'"""The {spec.domain}.* topics."""\n\n'
            "from __future__ import annotations\n\n"
            f"{_from_import('realtime', ['Context', 'Topic'])}\n\n"
            f"{code}\n\n"
            f"TOPICS = [{entry}]\n"
        )
    source = _merge_import(handler_file.read_text(), "realtime", ["Context", "Topic"])
    lines = source.splitlines(keepends=True)
    node = _binding(source, "TOPICS", handler_file)
    if node is not None:
        lines.insert(node.end_lineno or 0, f"TOPICS += [{entry}]\n")
        lines.insert(node.lineno - 1, code + "\n\n")
        return "".join(lines)
    ending = "" if source.endswith("\n") else "\n"
    return source + ending + f"\n\n{code}\n\nTOPICS = [{entry}]\n"


def _topic_permissions_text(path: Path, spec: TopicSpec) -> str:
    """The pattern's table after the last [topics.*] table: patterns are tried in order,
    so it goes after the ones there (and before [grants] and what else follows)."""
    lines = path.read_text().splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    topic_headers = [i for i in headers if lines[i].lstrip().startswith("[topics.")]
    if topic_headers:
        after = [i for i in headers if i > topic_headers[-1]]
        end = after[0] if after else len(lines)
        while end > topic_headers[-1] + 1 and (
            not lines[end - 1].strip() or lines[end - 1].lstrip()[0] == "#"
        ):
            end -= 1
    else:
        end = len(lines)
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    table = [f'\n[topics."{spec.pattern}"]\n', f"subscribe = [{_quoted(spec.subscribe)}]\n"]
    table.append(f"presence = [{_quoted(spec.subscribe)}]\n")
    if spec.publish:
        table.append(f"publish = [{_quoted(spec.publish)}]\n")
    lines[end:end] = table
    changed = "".join(lines)
    topics = tomllib.loads(changed).get("topics", {})
    if topics.get(spec.pattern, {}).get("subscribe") != list(spec.subscribe):
        raise ScaffoldError(f"{path}: could not add [topics.{spec.pattern!r}]")
    return changed


def _quoted(roles: tuple[str, ...]) -> str:
    return ", ".join(f'"{role}"' for role in roles)


def _topic_test_text(project: Project, spec: TopicSpec) -> str:
    roles = [role for role in spec.subscribe if role != "*"] or ["user"]
    return "\n".join(
        [
            f'"""The topic {spec.pattern} (written by `realtime new-topic`): its authorizer',
            'denies until its rule is written; then test who is allowed and who is not."""',
            "",
            "from __future__ import annotations",
            "",
            "from collections.abc import Iterator",
            "from pathlib import Path",
            "",
            "import pytest",
            "from starlette.testclient import TestClient",
            "",
            "from realtime.app import create_app",
            "from realtime.auth.dev import DevIssuer",
            "from realtime.protocol import Status",
            "from tests.conftest import ROOT, make_settings",
            "from tests.helpers import auth_header, call",
            "",
            "SUBSCRIBE = 30  # topics.subscribe",
            f'TOPIC = "{spec.example()}"',
            "",
            "",
            "@pytest.fixture",
            "def app(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:",
            "    settings = make_settings(",
            f'        tmp_path, handlers=("{project.handlers_module}",), '
            f'permissions_file=str(ROOT / "{project.permissions_file}")',
            "    )",
            "    issuer = DevIssuer.load_or_create(",
            "        settings.dev_key_file,",
            "        audience=settings.keycloak_audience,",
            "        client_id=settings.keycloak_client_id,",
            "    )",
            f'    token = issuer.mint("alice", {json.dumps(roles)}, tenant="acme")',
            "    with TestClient(create_app(settings)) as client:",
            "        yield client, token",
            "",
            "",
            "def test_the_authorizer_decides_after_the_roles(app: tuple[TestClient, str]) -> None:",
            "    client, token = app",
            '    with client.websocket_connect("/ws", headers=auth_header(token)) as ws:',
            '        answer = call(ws, SUBSCRIBE, {"topic": TOPIC})',
            '    assert answer["status_code"] == Status.PERMISSION_DENIED, answer',
            "",
        ]
    )


def topic_next_steps(spec: TopicSpec) -> list[str]:
    test = f"tests/test_topic_{spec.slug}.py"
    return [
        f"topic {spec.pattern}: subscribe and presence {', '.join(spec.subscribe)}, "
        + (f"publish {', '.join(spec.publish)}" if spec.publish else "publish: the server only"),
        "next:",
        f"  1. write who may subscribe in the authorizer in handlers/{spec.domain}.py "
        "(it denies until then)",
        f"  2. make {test} check who is allowed and who is not",
        "  3. publish from a handler: await ctx.services.hub.publish(topic, data)",
    ]

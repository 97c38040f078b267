"""Settings, permissions and package declarations: bad ones stop start-up, clearly."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from realtime.app import create_app, load_handlers
from realtime.exceptions import ConfigError
from realtime.packages import Package
from realtime.settings import Settings
from tests.conftest import APP_PACKAGES, make_settings
from tests.packages import TEST_PACKAGES, admin_only


def test_defaults_are_the_embedded_default() -> None:
    settings = Settings.from_mapping({})
    assert settings.dev_issuer_enabled and settings.redis_url is None
    assert settings.database_url is None and settings.database.startswith("sqlite:///")
    assert settings.allowed_origins is None and settings.max_frame_bytes == 65536


def test_environment_names_and_types() -> None:
    settings = Settings.from_mapping(
        {
            "KEYCLOAK_ISSUER": "http://kc/realms/r",
            "ALLOWED_ORIGINS": "https://a.example/, https://b",
            "REALTIME_PORT": "9000",
            "REALTIME_AUDIENCE_IN_AZP": "yes",
            "REALTIME_SEND_TIMEOUT": "2.5",
        }
    )
    assert not settings.dev_issuer_enabled
    assert settings.allowed_origins == ("https://a.example", "https://b")
    assert settings.port == 9000 and settings.audience_in_azp and settings.send_timeout == 2.5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REALTIME_PORT", "eighty", "REALTIME_PORT: expected an integer, got 'eighty'"),
        (
            "REALTIME_SEND_TIMEOUT",
            "0",
            "REALTIME_SEND_TIMEOUT: expected a positive number, got '0'",
        ),
        ("REALTIME_AUDIENCE_IN_AZP", "maybe", "REALTIME_AUDIENCE_IN_AZP: expected true or false"),
        ("REALTIME_JWT_ALGORITHMS", "RS256,HS256", "REALTIME_JWT_ALGORITHMS: only asymmetric"),
        ("REALTIME_JWT_ALGORITHMS", "none", "REALTIME_JWT_ALGORITHMS: only asymmetric"),
    ],
)
def test_invalid_setting_names_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_mapping({name: value})
    assert str(raised.value).startswith(message)


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REALTIME_PORT=9100\nKEYCLOAK_AUDIENCE=from-file\n")
    settings = Settings.from_env({"KEYCLOAK_AUDIENCE": "from-env"}, env_file=str(env_file))
    assert settings.port == 9100 and settings.keycloak_audience == "from-env"


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "permissions.toml"
    path.write_text(text)
    return str(path)


def test_permission_entry_naming_no_package_stops_start_up(tmp_path: Path) -> None:
    path = _write(tmp_path, '[packages]\necho = ["user"]\n"no.such" = ["user"]\n')
    with pytest.raises(ConfigError, match="entries name no package: no.such"):
        create_app(make_settings(tmp_path, permissions_file=path), APP_PACKAGES)


def test_package_without_entry_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the shipped topic authorizer (handlers/projects.py) needs its [topics] entry
    text = '[packages]\necho = ["user"]\n[topics."project.{id}"]\nsubscribe = ["user"]\n'
    path = _write(tmp_path, text)
    with caplog.at_level(logging.WARNING, logger="realtime"):
        create_app(make_settings(tmp_path, permissions_file=path), APP_PACKAGES)
    assert "package 'me' has no permissions entry: nobody can call it" in caplog.text


def test_malformed_permissions_stop_start_up(tmp_path: Path) -> None:
    for text, message in [
        ('[packages]\necho = "user"\n', "expected a list of role names"),
        ("[packages\n", "permissions.toml"),
        ('[routes]\n"GET /nothing" = ["user"]\n', "entries name no route"),
    ]:
        with pytest.raises(ConfigError, match=message):
            create_app(
                make_settings(tmp_path, permissions_file=_write(tmp_path, text)), APP_PACKAGES
            )
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(make_settings(tmp_path, permissions_file=str(tmp_path / "missing.toml")))


def test_duplicate_package_id_or_name_stops_start_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(ConfigError, match="package id 40 is declared twice"):
        create_app(settings, [*APP_PACKAGES, Package(40, "other", admin_only)])
    with pytest.raises(ConfigError, match="package name 'echo' is declared twice"):
        create_app(settings, [*APP_PACKAGES, Package(77, "echo", admin_only)])


@pytest.mark.parametrize("pkg_id", [9000, 9999, 0, -1, 10_000])
def test_an_application_id_outside_its_range_stops_start_up(tmp_path: Path, pkg_id: int) -> None:
    with pytest.raises(ConfigError) as raised:
        create_app(make_settings(tmp_path), [*APP_PACKAGES, Package(pkg_id, "x.y", admin_only)])
    assert str(raised.value) == (
        f"package x.y: id {pkg_id} is not an application id "
        "(1-8999 except 42; 9000-9999 and 42 are the framework's)"
    )
    with pytest.raises(ConfigError, match="package id 42 is declared twice"):
        create_app(make_settings(tmp_path), [*APP_PACKAGES, Package(42, "x.y", admin_only)])


def test_a_handler_package_serves_every_module_in_it(tmp_path: Path) -> None:
    """A module dropped into a handler package is found without being listed anywhere;
    `_private` modules and a package that lists its own PACKAGES are left as they are."""
    root = tmp_path / "discovered_app"
    root.mkdir()
    (root / "__init__.py").write_text('"""Found by discovery."""\n')
    body = "from realtime import Package\n\ndef f(ctx, data):\n    return data\n\n"
    (root / "alpha.py").write_text(body + 'PACKAGES = [Package(700, "alpha.one", f)]\n')
    (root / "beta.py").write_text(body + 'PACKAGES = [Package(701, "beta.one", f)]\n')
    (root / "_hidden.py").write_text(body + 'PACKAGES = [Package(702, "hidden.one", f)]\n')
    sys.path.insert(0, str(tmp_path))
    try:
        packages, _ = load_handlers(("discovered_app",))
    finally:
        sys.path.remove(str(tmp_path))
    assert [p.name for p in packages] == ["alpha.one", "beta.one"]
    assert {p.name for p in APP_PACKAGES} >= {"echo", "projects.create", "jobs.start"}


def test_invalid_schema_stops_start_up(tmp_path: Path) -> None:
    broken = Package(911, "test.broken", admin_only, schema={"type": "no-such-type"})
    with pytest.raises(ConfigError, match="test.broken: invalid JSON Schema"):
        create_app(make_settings(tmp_path), [*APP_PACKAGES, *TEST_PACKAGES, broken])


def test_unknown_handler_module_stops_start_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, handlers=("handlers", "no_such_module"))
    with pytest.raises(ConfigError, match="REALTIME_HANDLERS: cannot import 'no_such_module'"):
        create_app(settings)

"""permissions.toml: who may call which package, REST-only route and topic. Default deny.

    [packages]
    echo = ["user"]            # roles; "*" means any authenticated caller
    [routes]
    "GET /reports" = ["admin"]  # REST-only routes
    [topics."user.{sub}"]
    subscribe = ["owner"]
    [grants]
    "jobs.any" = ["support"]    # named rights that handlers check (ctx.granted)

An entry naming no package stops start-up; a package without an entry cannot be called
and start-up warns about it.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from realtime.exceptions import ConfigError
from realtime.types import Roles

logger = logging.getLogger("realtime")
ANY = "*"


def allows(allowed: Roles, roles: Roles) -> bool:
    return ANY in allowed or not allowed.isdisjoint(roles)


@dataclass(frozen=True)
class Permissions:
    packages: dict[str, Roles] = field(default_factory=dict)
    routes: dict[str, Roles] = field(default_factory=dict)
    topics: dict[str, dict[str, Roles]] = field(default_factory=dict)
    grants: dict[str, Roles] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> Permissions:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"REALTIME_PERMISSIONS: {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"REALTIME_PERMISSIONS: {path}: {error}") from None
        return cls.from_document(document, path)

    @classmethod
    def from_document(cls, document: dict[str, Any], source: str = "permissions") -> Permissions:
        topics = document.get("topics", {})
        return cls(
            packages=_roles_table(document.get("packages", {}), f"{source} [packages]"),
            routes=_roles_table(document.get("routes", {}), f"{source} [routes]"),
            grants=_roles_table(document.get("grants", {}), f"{source} [grants]"),
            topics={
                pattern: _roles_table(actions, f"{source} [topics.{pattern!r}]")
                for pattern, actions in _table(topics, f"{source} [topics]").items()
            },
        )

    def package_roles(self, name: str) -> Roles:
        return self.packages.get(name, frozenset())

    def check(self, package_names: Iterable[str], route_keys: Iterable[str] = ()) -> None:
        """Stop on entries naming nothing; warn about packages nobody may call."""
        names = set(package_names)
        unknown = sorted(set(self.packages) - names)
        if unknown:
            raise ConfigError(f"permissions: entries name no package: {', '.join(unknown)}")
        route_keys = list(route_keys)
        unknown_routes = sorted(set(self.routes) - set(route_keys))
        if unknown_routes:
            raise ConfigError(f"permissions: entries name no route: {', '.join(unknown_routes)}")
        for name in sorted(names - set(self.packages)):
            logger.warning("package %r has no permissions entry: nobody can call it", name)
        for key in sorted(set(route_keys) - set(self.routes)):
            logger.warning("route %r has no permissions entry: nobody can call it", key)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    return value


def _roles_table(value: Any, where: str) -> dict[str, Roles]:
    table = _table(value, where)
    for key, roles in table.items():
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise ConfigError(f"{where} {key!r}: expected a list of role names")
    return {key: frozenset(roles) for key, roles in table.items()}

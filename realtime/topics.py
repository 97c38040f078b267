"""Topic permissions: patterns with placeholders bound to the caller (permissions.toml).

    [topics."user.{sub}"]        # matches only the caller's own topic
    subscribe = ["*"]
    [topics."projects.{tenant}"]
    subscribe = ["user"]         # publish absent: nobody but the server

Placeholders: `{sub}` and `{tenant}`; `*` matches one dot-free segment. The first pattern
that matches decides; no match, or an action the pattern does not list, is denied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from realtime.auth.principal import Principal
from realtime.exceptions import ConfigError, PermissionDenied
from realtime.permissions import allows
from realtime.types import Roles

ACTIONS = ("subscribe", "publish", "presence")
TOPIC_PATTERN = "^[A-Za-z0-9_.:@-]{1,200}$"
_PLACEHOLDER = re.compile(r"\{(sub|tenant)\}|\*|[^{}*]+")


@dataclass(frozen=True)
class _Rule:
    pattern: str
    parts: tuple[str, ...]
    actions: dict[str, Roles]

    def matches(self, topic: str, principal: Principal) -> bool:
        regex = "".join(self._piece(part, principal) for part in self.parts)
        return re.fullmatch(regex, topic) is not None

    @staticmethod
    def _piece(part: str, principal: Principal) -> str:
        if part == "{sub}":
            return re.escape(principal.sub)
        if part == "{tenant}":
            return re.escape(principal.tenant_id)
        if part == "*":
            return "[^.]+"
        return re.escape(part)


class TopicPermissions:
    def __init__(self, table: dict[str, dict[str, Roles]]) -> None:
        self._rules = [self._rule(pattern, actions) for pattern, actions in table.items()]

    @staticmethod
    def _rule(pattern: str, actions: dict[str, Roles]) -> _Rule:
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ConfigError(f"permissions [topics.{pattern!r}]: unknown actions {unknown}")
        parts = tuple(match.group(0) for match in _PLACEHOLDER.finditer(pattern))
        if "".join(parts) != pattern:
            raise ConfigError(f"permissions [topics.{pattern!r}]: only {{sub}}, {{tenant}}, *")
        return _Rule(pattern, parts, actions)

    def patterns(self) -> dict[str, dict[str, Roles]]:
        """Each topic pattern with the roles of its actions, in the order they are tried."""
        return {rule.pattern: rule.actions for rule in self._rules}

    def check(self, principal: Principal, topic: str, action: str) -> None:
        for rule in self._rules:
            if rule.matches(topic, principal):
                if allows(rule.actions.get(action, frozenset()), principal.roles):
                    return
                break
        raise PermissionDenied(f"you may not {action} on topic {topic!r}")

"""Topic permissions: patterns with placeholders (permissions.toml), and the handlers'
authorizers of those patterns.

    [topics."user.{sub}"]        # matches only the caller's own topic
    subscribe = ["*"]
    [topics."project.{id}"]      # any one segment, handed to the pattern's authorizer
    subscribe = ["user"]

`{sub}` and `{tenant}` are bound to the caller; any other `{name}` and `*` match one
dot-free segment. The first pattern that matches decides; no match, or an action the
pattern does not list, is denied. Then the pattern's authorizer, if a handler module
declares one (`TOPICS = [Topic("project.{id}", project_member)]`), decides with the
request's context and the named segments: roles first, then the authorizer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from realtime.auth.principal import Principal
from realtime.exceptions import ConfigError, PermissionDenied
from realtime.permissions import allows
from realtime.types import Roles

if TYPE_CHECKING:
    from realtime.packages import Context

ACTIONS = ("subscribe", "publish", "presence")
TOPIC_PATTERN = "^[A-Za-z0-9_.:@-]{1,200}$"
BOUND = ("sub", "tenant")  # placeholders bound to the caller, never handed to an authorizer
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}|\*|[^{}*]+")

# (the request's context, the pattern's named segments) -> allowed? An authorizer may also
# raise a realtime.exceptions error (NotFound, Unavailable, ...), answered as that error.
Authorizer = Callable[["Context", dict[str, str]], Awaitable[bool]]
# (the socket's context) -> the topics the server subscribes it to at connect
ConnectHook = Callable[["Context"], Awaitable[Iterable[str]]]


@dataclass(frozen=True)
class Topic:
    """A handler module's authorizer of one permissions.toml topic pattern::

    TOPICS = [Topic("project.{id}", project_member)]

    It runs after the pattern's roles allowed the action, for every client request on a
    matching topic (subscribe, a resume included, publish, presence, history), never per
    delivered message."""

    pattern: str
    authorize: Authorizer


@dataclass(frozen=True)
class _Rule:
    pattern: str
    parts: tuple[str, ...]
    actions: dict[str, Roles]
    authorize: Authorizer | None = None

    def match(self, topic: str, principal: Principal) -> dict[str, str] | None:
        """The named segments when `topic` matches for this caller, else None."""
        regex = "".join(self._piece(part, principal) for part in self.parts)
        found = re.fullmatch(regex, topic)
        return None if found is None else found.groupdict()

    @staticmethod
    def _piece(part: str, principal: Principal) -> str:
        if part == "{sub}":
            return re.escape(principal.sub)
        if part == "{tenant}":
            return re.escape(principal.tenant_id)
        if part == "*":
            return "[^.]+"
        if part.startswith("{"):
            return f"(?P<{part[1:-1]}>[^.]+)"
        return re.escape(part)


class TopicPermissions:
    """The [topics] table of permissions.toml and the authorizers of its patterns."""

    def __init__(
        self,
        table: dict[str, dict[str, Roles]],
        topics: Sequence[Topic] = (),
        connect_hooks: Sequence[ConnectHook] = (),
    ) -> None:
        # what every /ws socket is subscribed to at connect (realtime.channels)
        self.connect_hooks = tuple(connect_hooks)
        authorizers = _authorizers(table, topics)
        self._rules = [
            self._rule(pattern, actions, authorizers.get(pattern))
            for pattern, actions in table.items()
        ]

    @staticmethod
    def _rule(pattern: str, actions: dict[str, Roles], authorize: Authorizer | None) -> _Rule:
        where = f"permissions [topics.{pattern!r}]"
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            raise ConfigError(f"{where}: unknown actions {unknown}")
        parts = tuple(match.group(0) for match in _PLACEHOLDER.finditer(pattern))
        if "".join(parts) != pattern:
            raise ConfigError(f"{where}: only {{name}} placeholders and * may be used")
        names = [part[1:-1] for part in parts if part.startswith("{")]
        named = [name for name in names if name not in BOUND]
        if len(set(named)) != len(named):
            raise ConfigError(f"{where}: a placeholder is named twice")
        return _Rule(pattern, parts, actions, authorize)

    def patterns(self) -> dict[str, dict[str, Roles]]:
        """Each topic pattern with the roles of its actions, in the order they are tried."""
        return {rule.pattern: rule.actions for rule in self._rules}

    def first_pattern(self, principal: Principal, topic: str) -> str | None:
        """The pattern that decides for `topic` (the first that matches), if any."""
        for rule in self._rules:
            if rule.match(topic, principal) is not None:
                return rule.pattern
        return None

    def check(self, principal: Principal, topic: str, action: str) -> None:
        """The roles of permissions.toml only (no authorizer): PermissionDenied unless
        they allow `action` on `topic`."""
        self._allowed(principal, topic, action)

    async def authorize(self, ctx: Context, topic: str, action: str) -> None:
        """Roles first, then the pattern's authorizer: what a client's request on a topic
        must pass. PermissionDenied, or whatever the authorizer raised."""
        rule, params = self._allowed(ctx.principal, topic, action)
        if rule.authorize is not None and not await rule.authorize(ctx, params):
            raise _denied(action, topic)

    def _allowed(
        self, principal: Principal, topic: str, action: str
    ) -> tuple[_Rule, dict[str, str]]:
        for rule in self._rules:
            params = rule.match(topic, principal)
            if params is not None:
                if allows(rule.actions.get(action, frozenset()), principal.roles):
                    return rule, params
                break
        raise _denied(action, topic)


def _denied(action: str, topic: str) -> PermissionDenied:
    return PermissionDenied(f"you may not {action} on topic {topic!r}")


def _authorizers(
    table: dict[str, dict[str, Roles]], topics: Sequence[Topic]
) -> dict[str, Authorizer]:
    """Each declared Topic by pattern; a pattern declared twice, or one permissions.toml
    does not list (its roles would deny everyone, silently), stops start-up."""
    found: dict[str, Authorizer] = {}
    for topic in topics:
        if topic.pattern in found:
            raise ConfigError(f"Topic {topic.pattern!r} is declared twice")
        if topic.pattern not in table:
            raise ConfigError(
                f"Topic {topic.pattern!r} has no [topics.{topic.pattern!r}] entry in permissions"
            )
        found[topic.pattern] = topic.authorize
    return found

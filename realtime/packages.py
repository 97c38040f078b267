"""Package declarations: one per operation, served on the socket and, with a route, over REST.

A handler author writes::

    async def echo(ctx: Context, data: JSONObject) -> JSONObject:
        return data

    PACKAGES = [Package(40, "echo", echo, schema={"type": "object"}, rest=Rest("POST", "/echo"))]

and one line in permissions.toml (`realtime new-package` writes all three). Duplicate ids
or names, and an application id outside APPLICATION_IDS, stop start-up.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from realtime.exceptions import ConfigError, InvalidData, UnknownPackage
from realtime.types import JSONObject, Schema

if TYPE_CHECKING:
    from realtime.auth.principal import Principal
    from realtime.bus import Offset
    from realtime.services import Framework, Services

PER_PAGE_DEFAULT = 20
PER_PAGE_MAX = 100
PAGE_MAX = 10_000_000  # keeps OFFSET within every engine's integer range
PAGINATION_PROPERTIES: JSONObject = {
    "page": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": 1},
    "per_page": {
        "type": "integer",
        "minimum": 1,
        "maximum": PER_PAGE_MAX,
        "default": PER_PAGE_DEFAULT,
    },
}

# Package ids (docs/protocol.md "Package ids"): an application's are 1-8999; the
# framework's built-ins take theirs from 9000-9999, except auth.refresh, which keeps 42
# for the clients that know it. `realtime new-package` picks the lowest free id from 100
# (the shipped domains use 1-99 in blocks of ten; the test suite 900-999).
APPLICATION_IDS = range(1, 9000)
FRAMEWORK_IDS = range(9000, 10000)
KEPT_FRAMEWORK_IDS = frozenset({42})
SCAFFOLD_FIRST_ID = 100

META_SCHEMA: JSONObject = {
    "type": "object",
    "properties": {k: {"type": "integer"} for k in ("page", "per_page", "total", "pages")},
    "required": ["page", "per_page", "total", "pages"],
}


class Session(Protocol):
    """What a handler may do with the socket it was called on (absent over REST)."""

    id: str
    principal: Principal | None

    async def emit(self, event: str, data: Any) -> None: ...

    async def refresh(self, token: str) -> Principal: ...

    def enqueue(self, message: bytes, direct: bool = True, replay: bool = False) -> None: ...


@dataclass(slots=True)
class Context:
    """Everything a handler receives besides its validated data."""

    principal: Principal
    package: Package
    services: Services
    req_id: str | None = None
    session: Session | None = None
    # (go live, cancel) of each subscription this request made
    live: list[tuple[Callable[[], None], Callable[[], None]]] | None = None

    def granted(self, grant: str) -> bool:
        """Whether the caller holds a named grant of permissions.toml ([grants])."""
        return self._framework().dispatcher.granted(grant, self.principal.roles)

    def socket(self) -> Session:
        """The socket this request came on; INVALID_DATA over REST."""
        if self.session is None:
            raise InvalidData(f"{self.package.name} is only served on a socket")
        return self.session

    async def subscribe(self, topic: str, since: str | Offset | None = None) -> JSONObject:
        """Subscribe this request's socket to `topic`, resuming after `since` (an offset,
        or `Offset.start()` for the whole retained history). Returns `{topic, offset,
        recovered}`. The events come after this request's answer (history first, then
        live, nothing twice); if the handler fails after this call, the subscription is
        dropped (a failed request subscribes to nothing). Who may subscribe is the
        handler's to check first (`await ctx.services.topics.authorize(ctx, topic,
        "subscribe")` for a topic of permissions.toml: its roles, then its authorizer):
        this subscribes what it is asked to, as jobs.watch does for a job its caller may
        see."""
        session = self.socket()
        answer, go_live, cancel = await self._framework().hub.subscribe(session, topic, since)
        if self.live is None:
            self.live = []
        self.live.append((go_live, cancel))
        return answer

    def unsubscribe(self, topic: str) -> bool:
        """Stop this request's socket receiving `topic`; False if it was not subscribed."""
        return self._framework().hub.unsubscribe(self.socket(), topic)

    def answered(self) -> None:
        """The answer is queued: deliver what the request subscribed to (the dispatcher
        calls it)."""
        live, self.live = self.live, None
        for go_live, _ in live or ():
            go_live()

    def abandon(self) -> None:
        """The request failed or was cancelled: drop what it subscribed to, and only that
        (a later request's subscription to the same topic stays); the dispatcher calls
        it."""
        live, self.live = self.live, None
        for _, cancel in live or ():
            cancel()

    def _framework(self) -> Framework:
        # the framework's own view of the object handlers see as `Services`
        return cast("Framework", self.services)


# `async def` for handlers that wait on anything. A plain `def` runs in a worker thread
# under the same deadline; with `inline=True` it runs on the event loop itself, without a
# task or a thread: only for work of microseconds (echo), since nothing else on the node
# runs meanwhile (the dispatcher logs and counts an inline call over INLINE_BUDGET).
Handler = Callable[[Context, JSONObject], Awaitable[Any]] | Callable[[Context, JSONObject], Any]


@dataclass(frozen=True, slots=True)
class Rest:
    """The REST route of a package: path parameters, query and JSON body merge into data."""

    method: str
    path: str
    status: int = 200


@dataclass(frozen=True, slots=True)
class Page:
    """What a paginated handler returns; the router adds `meta`."""

    items: list[Any]
    total: int


@dataclass(frozen=True)
class Package:
    id: int
    name: str
    handler: Handler
    schema: Schema = field(default_factory=lambda: {"type": "object"})
    response_schema: Schema | None = None
    rest: Rest | None = None
    paginated: bool = False
    timeout: float | None = None
    description: str = ""
    inline: bool = False
    # every call is recorded in the audit log (realtime.audit): who, what, how, outcome
    audited: bool = False
    # (requests per second, burst) per caller for this package, on top of the global
    # REALTIME_RATE_LIMIT: for expensive operations; shared by the fleet with REDIS_URL
    rate: tuple[float, int] | None = None

    def __post_init__(self) -> None:
        if self.inline and inspect.iscoroutinefunction(self.handler):
            raise ConfigError(f"package {self.name}: inline=True needs a plain `def` handler")
        if self.rate is not None and not (self.rate[0] > 0 and self.rate[1] >= 1):
            raise ConfigError(f"package {self.name}: rate is (requests per second > 0, burst >= 1)")

    @property
    def runs(self) -> str:
        """Where the handler runs: "inline" (the event loop), "thread" or "task"."""
        if self.inline:
            return "inline"
        return "task" if inspect.iscoroutinefunction(self.handler) else "thread"

    def request_schema(self) -> JSONObject:
        """The schema validated on every call; pagination fields are added for paginated ones."""
        schema = dict(self.schema)
        if self.paginated:
            schema["properties"] = {**PAGINATION_PROPERTIES, **schema.get("properties", {})}
        return schema

    def answer_schema(self, meta: JSONObject = META_SCHEMA) -> JSONObject:
        """What a caller gets on success: the data, or `{data: [...], meta}` when paginated
        (the REST body, and what the JavaScript client resolves)."""
        schema: JSONObject = dict(self.response_schema or {})
        if not self.paginated:
            return schema
        return {
            "type": "object",
            "properties": {"data": {"type": "array", "items": schema}, "meta": meta},
            "required": ["data", "meta"],
        }


class Catalog:
    """All packages of the app, by id and by name."""

    def __init__(self, packages: Iterable[Package]) -> None:
        self.by_id: dict[int, Package] = {}
        self.by_name: dict[str, Package] = {}
        for package in packages:
            self._add(package)

    def _add(self, package: Package) -> None:
        if package.id in self.by_id:
            other = self.by_id[package.id].name
            raise ConfigError(
                f"package id {package.id} is declared twice ({other}, {package.name})"
            )
        if package.name in self.by_name:
            raise ConfigError(f"package name {package.name!r} is declared twice")
        self.by_id[package.id] = package
        self.by_name[package.name] = package

    def check_application_ids(self, framework: Iterable[Package]) -> None:
        """Every package not in `framework` must have an id of APPLICATION_IDS outside
        KEPT_FRAMEWORK_IDS: a clash with a future built-in is caught now, not then."""
        builtin = {package.id for package in framework}
        for package in self.by_id.values():
            if package.id not in builtin and not application_id(package.id):
                raise ConfigError(
                    f"package {package.name}: id {package.id} is not an application id "
                    f"(1-8999 except 42; 9000-9999 and 42 are the framework's)"
                )

    def free_ids(self) -> list[tuple[int, int]]:
        """The free application ids, as inclusive (first, last) ranges."""
        free: list[tuple[int, int]] = []
        for pkg_id in APPLICATION_IDS:
            if pkg_id in self.by_id or pkg_id in KEPT_FRAMEWORK_IDS:
                continue
            if free and free[-1][1] == pkg_id - 1:
                free[-1] = (free[-1][0], pkg_id)
            else:
                free.append((pkg_id, pkg_id))
        return free

    def get(self, pkg_id: int) -> Package:
        try:
            return self.by_id[pkg_id]
        except KeyError:
            raise UnknownPackage(f"no package has pkg_id {pkg_id}") from None

    def __iter__(self) -> Any:
        return iter(sorted(self.by_id.values(), key=lambda package: package.id))


def application_id(pkg_id: int) -> bool:
    return pkg_id in APPLICATION_IDS and pkg_id not in KEPT_FRAMEWORK_IDS

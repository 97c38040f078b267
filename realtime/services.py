"""What a handler may use (`ctx.services`), apart from what the framework holds.

The composition root (`realtime.lifespan.Services`) holds much more: the dispatcher, the
token verifier, the development issuer, the open sockets. A handler sees only this
protocol, so it cannot come to depend on them; `Framework` is the framework's own view
of the same object (the package router's grants, the whole hub).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from databases import Database

    from realtime.audit import AuditLog
    from realtime.bus import Offset
    from realtime.bus.hub import Hub
    from realtime.jobs import Jobs
    from realtime.metrics import Metrics
    from realtime.packages import Session
    from realtime.sessions import Sessions
    from realtime.settings import Settings
    from realtime.topics import TopicPermissions
    from realtime.types import Roles


class Publisher(Protocol):
    """The hub, as a handler uses it (subscribing goes through `ctx.subscribe`)."""

    async def publish(
        self, topic: str, data: Any, event: str = "message", key: str | None = None
    ) -> Offset: ...

    async def publish_user(
        self, sub: str, event: str, data: Any, *, tenant: str, unless: str | None = None
    ) -> Offset: ...

    async def presence(self, topic: str) -> list[dict[str, Any]]: ...

    def pinned(self, subscriber: Session) -> list[dict[str, Any]]: ...

    async def watch_presence(
        self, subscriber: Session, topic: str
    ) -> tuple[list[dict[str, Any]], bool]: ...

    async def history(
        self, topic: str, since: str | None, limit: int, reverse: bool = False
    ) -> dict[str, Any]: ...


class Services(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def database(self) -> Database: ...

    @property
    def hub(self) -> Publisher: ...

    @property
    def topics(self) -> TopicPermissions: ...

    @property
    def jobs(self) -> Jobs: ...


class Grants(Protocol):
    def granted(self, grant: str, roles: Roles) -> bool: ...


class Framework(Services, Protocol):
    """The same object as the framework sees it."""

    @property
    def hub(self) -> Hub: ...

    @property
    def dispatcher(self) -> Grants: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def sessions(self) -> Sessions: ...

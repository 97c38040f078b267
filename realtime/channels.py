"""Server-side subscriptions, made when a `/ws` socket is authenticated: its caller's
personal channel (`user.<tenant>.<sub>`), and the topics the application's connect hooks name.

A handler module declares hooks next to its packages::

    async def my_tenant(ctx: Context) -> list[str]:
        return [f"projects.{ctx.principal.tenant_id}"]

    CONNECT = [my_tenant]

A hook's topics pass the same rules as a client's own subscribe (permissions.toml roles,
then the pattern's authorizer); the personal channel is the server's and needs none. A
client resumes them with `?since.<topic>=<offset>` in the socket's URL. What fails (a
hook that raises or runs past the handler deadline, a topic the rules deny, the bus down)
is logged and skipped: the socket is served without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from realtime.exceptions import InvalidData, RequestError
from realtime.packages import Context, Package
from realtime.protocol import personal_topic
from realtime.topics import ConnectHook

if TYPE_CHECKING:
    from realtime.bus.hub import Hub
    from realtime.socket.connection import Connection

logger = logging.getLogger("realtime.channels")

# the query parameters that resume a server-side subscription: since.<topic>=<offset>
SINCE_PREFIX = "since."


async def _not_callable(ctx: Context, data: Any) -> Any:
    raise InvalidData("connect is not a package")


# what `ctx.package` is in a connect hook and its topics' authorizers (never in a catalog)
CONNECT = Package(0, "connect", _not_callable, description="a socket's connect hooks")


def resume_offsets(query: Iterable[tuple[str, str]]) -> dict[str, str]:
    """`since.<topic>=<offset>` pairs of the socket's query string, by topic."""
    return {
        key[len(SINCE_PREFIX) :]: value
        for key, value in query
        if key.startswith(SINCE_PREFIX) and value
    }


async def open_channels(connection: Connection) -> None:
    """The socket is authenticated: subscribe it to its personal channel, then to each
    connect hook's topics, before any of its frames is served."""
    services, principal = connection.services, connection.principal
    assert principal is not None  # on_open runs once the socket is authenticated
    ctx = Context(principal, CONNECT, services, None, connection)
    since = resume_offsets(connection.websocket.query_params.multi_items())
    hub = services.hub
    if "." in principal.tenant_id:
        logger.warning("no personal channel for tenant %r: its id holds a '.'", principal.tenant_id)
    else:
        personal = personal_topic(principal.tenant_id, principal.sub)
        await _subscribe(hub, connection, ctx, personal, since, checked=False)
    for topic in await _hooked(ctx, services.topics.connect_hooks):
        await _subscribe(hub, connection, ctx, topic, since, checked=True)


async def _hooked(ctx: Context, hooks: Iterable[ConnectHook]) -> list[str]:
    topics: dict[str, None] = {}  # in order, once each
    timeout = ctx.services.settings.handler_timeout
    for hook in hooks:
        try:
            async with asyncio.timeout(timeout):
                topics.update(dict.fromkeys(await hook(ctx)))
        except Exception:
            # the socket is served without this hook's topics; the client can tell by
            # `topics.channels`, the operator by this line
            logger.exception("connect hook %s failed for %s", _name(hook), ctx.principal.sub)
    return list(topics)


async def _subscribe(
    hub: Hub, session: Connection, ctx: Context, topic: str, since: Mapping[str, str], checked: bool
) -> None:
    try:
        if checked:
            await ctx.services.topics.authorize(ctx, topic, "subscribe")
        _, go_live, _ = await hub.subscribe(session, topic, since.get(topic), pinned=True)
    except RequestError as error:  # denied, not found, the bus down: the socket goes on
        logger.warning("connect: %s not subscribed to %r: %s", ctx.principal.sub, topic, error)
        return
    except Exception:  # an authorizer's bug must not cost the socket either
        logger.exception("connect: %s not subscribed to %r", ctx.principal.sub, topic)
        return
    go_live()  # history first (a resume), then live


def _name(hook: ConnectHook) -> str:
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', repr(hook))}"

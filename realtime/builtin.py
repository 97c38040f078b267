"""Packages the framework itself serves: `auth.refresh` (PROTOCOL.md 1.1, 1.2), and the
per-user controls over the sockets it holds, `sessions.list` and `sessions.disconnect`
(realtime.sessions; docs/protocol.md, Sessions)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from realtime.auth.principal import Principal
from realtime.exceptions import InvalidData
from realtime.packages import Catalog, Context, Package, Page, Rest
from realtime.types import JSONObject

if TYPE_CHECKING:
    from realtime.services import Framework

AUTH_REFRESH_ID = 42
SESSIONS_LIST_ID = 9010
SESSIONS_DISCONNECT_ID = 9011


def refresh_answer(principal: Principal) -> dict[str, Any]:
    return {"sub": principal.sub, "expires_at": principal.expires_at}


async def auth_refresh(ctx: Context, data: JSONObject) -> dict[str, Any]:
    """Extend an authenticated socket's life with a fresh token for the same subject."""
    if ctx.session is None:
        raise InvalidData("auth.refresh is only served on a socket")
    return refresh_answer(await ctx.session.refresh(data["token"]))


async def sessions_list(ctx: Context, data: JSONObject) -> Page:
    """The sockets of the caller's tenant (of one user with `sub`), by sub, then age."""
    sessions = cast("Framework", ctx.services).sessions
    found = await sessions.listing(ctx.principal.tenant_id, data.get("sub"))
    found.sort(key=lambda socket: (socket["sub"], socket["connected_at"], socket["id"]))
    first = (data["page"] - 1) * data["per_page"]
    return Page(found[first : first + data["per_page"]], len(found))


async def sessions_disconnect(ctx: Context, data: JSONObject) -> dict[str, Any]:
    """Close every socket of user `sub` of the caller's tenant, on every node (4410), and
    refuse the tokens the user was issued until now, for REALTIME_REVOKE_SECONDS."""
    sessions = cast("Framework", ctx.services).sessions
    return await sessions.disconnect(ctx.principal.tenant_id, data["sub"], data.get("reason", ""))


# a sub as tokens carry it (PostgreSQL-safe like the audit log's: no NUL)
_SUB = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00]*$"}
SESSION = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the socket's id (the server's, per node)"},
        "sub": {"type": "string"},
        "node": {"type": "string", "description": "host:pid of the node holding it"},
        "connected_at": {"type": "string", "format": "date-time"},
        "remote": {
            "type": ["string", "null"],
            "description": "the peer's address as the node sees it (a proxy's, behind one)",
        },
        "path": {"type": "string", "description": "/ws, /web, /ws/echo, /ws/jobs/<id>"},
    },
    "required": ["id", "sub", "node", "connected_at", "remote", "path"],
}
DISCONNECTED = {
    "type": "object",
    "properties": {
        "sub": {"type": "string"},
        "closed": {
            "type": "integer",
            "description": "sockets closed on the nodes that answered within a second",
        },
        "nodes": {"type": "integer", "description": "nodes told (this one included)"},
        "unanswered_nodes": {
            "type": "integer",
            "description": "nodes told that did not say in time how many they closed",
        },
        "revoked_at": {
            "type": "integer",
            "description": "the user's tokens issued at or before this time (Unix seconds) "
            "are refused (4401 token revoked, REST 401) on every node",
        },
        "revoked_until": {
            "type": "integer",
            "description": "until this time: revoked_at + REALTIME_REVOKE_SECONDS",
        },
    },
    "required": ["sub", "closed", "nodes", "unanswered_nodes", "revoked_at", "revoked_until"],
}

SESSION_PACKAGES = [
    Package(
        SESSIONS_LIST_ID,
        "sessions.list",
        sessions_list,
        schema={
            "type": "object",
            "properties": {"sub": _SUB},
            "additionalProperties": False,
        },
        response_schema=SESSION,
        paginated=True,
        rest=Rest("GET", "/sessions"),
        description="The open sockets of the caller's tenant, on every node (admins).",
    ),
    Package(
        SESSIONS_DISCONNECT_ID,
        "sessions.disconnect",
        sessions_disconnect,
        schema={
            "type": "object",
            "properties": {
                "sub": _SUB,
                "reason": {"type": "string", "maxLength": 80, "pattern": "^[^\\x00]*$"},
            },
            "required": ["sub"],
            "additionalProperties": False,
        },
        response_schema=DISCONNECTED,
        rest=Rest("POST", "/sessions/{sub}/disconnect"),
        audited=True,
        description="Close every socket of a user of the caller's tenant, on every node (4410); "
        "their tokens issued until now are refused for REALTIME_REVOKE_SECONDS.",
    ),
]

BUILTIN_PACKAGES = [
    Package(
        AUTH_REFRESH_ID,
        "auth.refresh",
        auth_refresh,
        schema={
            "type": "object",
            "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 16384}},
            "required": ["token"],
            "additionalProperties": False,
        },
        response_schema={
            "type": "object",
            "properties": {"sub": {"type": "string"}, "expires_at": {"type": "integer"}},
        },
        description="Authenticate a socket opened without a token, or extend an open one.",
    ),
    *SESSION_PACKAGES,
]


def catalog(packages: Iterable[Package]) -> Catalog:
    """The built-ins and the application's packages; an application id outside the
    application's range (realtime.packages.APPLICATION_IDS) stops start-up."""
    found = Catalog([*BUILTIN_PACKAGES, *packages])
    found.check_application_ids(BUILTIN_PACKAGES)
    return found

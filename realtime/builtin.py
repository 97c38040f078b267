"""Packages the protocol itself needs (PROTOCOL.md 1.1, 1.2): `auth.refresh`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from realtime.auth.principal import Principal
from realtime.exceptions import InvalidData
from realtime.packages import Catalog, Context, Package
from realtime.types import JSONObject

AUTH_REFRESH_ID = 42


def refresh_answer(principal: Principal) -> dict[str, Any]:
    return {"sub": principal.sub, "expires_at": principal.expires_at}


async def auth_refresh(ctx: Context, data: JSONObject) -> dict[str, Any]:
    """Extend an authenticated socket's life with a fresh token for the same subject."""
    if ctx.session is None:
        raise InvalidData("auth.refresh is only served on a socket")
    return refresh_answer(await ctx.session.refresh(data["token"]))


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
    )
]


def catalog(packages: Iterable[Package]) -> Catalog:
    """The built-ins and the application's packages; an application id outside the
    application's range (realtime.packages.APPLICATION_IDS) stops start-up."""
    found = Catalog([*BUILTIN_PACKAGES, *packages])
    found.check_application_ids(BUILTIN_PACKAGES)
    return found

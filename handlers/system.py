"""System packages: `echo` and `me`."""

from __future__ import annotations

from typing import Any

from realtime import Context, JSONObject, Package, Rest
from schema.system import ECHO, ME_RESPONSE, NO_DATA


# inline=True: both take a microsecond, so they run on the socket's reader, without a
# task or a thread (a slow inline handler would stall the node: see Package.inline)
def echo(ctx: Context, data: JSONObject) -> JSONObject:
    return data


def me(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return ctx.principal.public()


PACKAGES = [
    Package(
        40,
        "echo",
        echo,
        schema=ECHO,
        response_schema=ECHO,
        description="Answers with the same object.",
        inline=True,
    ),
    Package(
        41,
        "me",
        me,
        schema=NO_DATA,
        response_schema=ME_RESPONSE,
        rest=Rest("GET", "/me"),
        description="The caller, as the server sees it.",
        inline=True,
    ),
]

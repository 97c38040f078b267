"""A test-only handler module with connect hooks (CONNECT), for the user `hooked` only:
one hook raises, the other names a topic its roles allow and some they do not."""

from __future__ import annotations

from realtime import Context

HOOKED = "hooked"


async def failing(ctx: Context) -> list[str]:
    if ctx.principal.sub == HOOKED:
        raise RuntimeError("this connect hook fails on purpose")
    return []


async def tenant_topics(ctx: Context) -> list[str]:
    if ctx.principal.sub != HOOKED:
        return []
    tenant = ctx.principal.tenant_id
    # allowed; another tenant's (roles: denied); no pattern; the authorizer: not found
    return [f"projects.{tenant}", "projects.globex", "unlisted", "project.999999"]


CONNECT = [failing, tenant_topics]

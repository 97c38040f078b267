"""Projects: CRUD with soft delete, scoped to the caller's tenant, on the socket and REST.

Changes are published on `projects.<tenant_id>` (every list of the tenant) and on
`project.<id>` (a page showing that one project), whose subscribers the authorizer
`project_member` admits: users of the project's tenant only (TOPICS)."""

from __future__ import annotations

import logging
from typing import Any

from handlers import projects_sql as sql
from realtime import Context, JSONObject, Package, Page, Rest, Topic, translate
from realtime.exceptions import Conflict, NotFound, OutcomeUnknown, Unavailable
from schema import projects as s

NOT_FOUND = "project not found"
logger = logging.getLogger("handlers.projects")


async def _announce(ctx: Context, op: str, project: dict[str, Any]) -> dict[str, Any]:
    """Tell open lists of the tenant and pages of the project, after the write committed
    (each write is one statement).

    A bus outage must not turn a committed write into an error the client would retry, so
    a failed publication is logged, not raised."""
    event = {"op": op, "project": project}
    try:
        await ctx.services.hub.publish(f"projects.{ctx.principal.tenant_id}", event)
        await ctx.services.hub.publish(f"project.{project['id']}", event)
    except (Unavailable, OutcomeUnknown):
        logger.warning("project %s %s maybe not announced: bus unavailable", project["id"], op)
    return project


async def project_member(ctx: Context, params: dict[str, str]) -> bool:
    """`project.{id}`: only users of the project's tenant. Another tenant's project, a
    deleted or a missing one are all NOT_FOUND, as for every project operation (a caller
    cannot tell another tenant's project from none); the roles of permissions.toml
    decided before this runs."""
    text = params["id"]
    project_id = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else 0
    if not 0 < project_id <= s.ID_MAX:  # no row has such an id (and no query runs)
        raise NotFound(NOT_FOUND)
    _found(await sql.get(ctx.services.database, ctx.principal.tenant_id, project_id))
    return True


def _found(project: dict[str, Any] | None) -> dict[str, Any]:
    if project is None:
        raise NotFound(NOT_FOUND)  # another tenant's row looks exactly like a missing one
    return project


async def create(ctx: Context, data: JSONObject) -> dict[str, Any]:
    db, tenant, key = ctx.services.database, ctx.principal.tenant_id, data.get("idempotency_key")
    if key is not None and (first := await sql.by_idempotency_key(db, tenant, key)):
        return first  # a retry: the first create's project, nothing written or announced
    try:
        project = await sql.create(db, tenant, data["name"], data.get("description"), key)
    except Exception as error:
        # the same key created concurrently (the unique index decided): that one wins
        if key is None or not isinstance(translate(error), Conflict):
            raise
        first = await sql.by_idempotency_key(db, tenant, key)
        if first is None:
            raise
        return first
    return await _announce(ctx, "created", project)


async def list_projects(ctx: Context, data: JSONObject) -> Page:
    items, total = await sql.page(
        ctx.services.database,
        ctx.principal.tenant_id,
        page=data["page"],
        per_page=data["per_page"],
        search=data.get("search"),
        include_deleted=data["include_deleted"],
        order=data["order"],
    )
    return Page(items, total)


async def get(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return _found(await sql.get(ctx.services.database, ctx.principal.tenant_id, data["id"]))


async def update(ctx: Context, data: JSONObject) -> dict[str, Any]:
    changes: dict[str, Any] = {k: data[k] for k in ("name", "description") if k in data}
    db = ctx.services.database
    if not changes:  # an empty PATCH changes nothing, updated_at included
        return _found(await sql.get(db, ctx.principal.tenant_id, data["id"]))
    project = _found(await sql.update(db, ctx.principal.tenant_id, data["id"], changes))
    return await _announce(ctx, "updated", project)


async def delete(ctx: Context, data: JSONObject) -> dict[str, Any]:
    db = ctx.services.database
    deleted = _found(await sql.soft_delete(db, ctx.principal.tenant_id, data["id"]))
    return await _announce(ctx, "deleted", deleted)


PACKAGES = [
    Package(
        10,
        "projects.create",
        create,
        schema=s.PROJECT_CREATE,
        response_schema=s.PROJECT,
        rest=Rest("POST", "/projects", 201),
        description="Create a project.",
        audited=True,
    ),
    Package(
        11,
        "projects.list",
        list_projects,
        schema=s.PROJECT_LIST,
        response_schema=s.PROJECT,
        paginated=True,
        rest=Rest("GET", "/projects"),
        description="A page of the tenant's projects, newest first by default.",
    ),
    Package(
        12,
        "projects.get",
        get,
        schema=s.PROJECT_ID,
        response_schema=s.PROJECT,
        rest=Rest("GET", "/projects/{id}"),
        description="One project.",
    ),
    Package(
        13,
        "projects.update",
        update,
        schema=s.PROJECT_UPDATE,
        response_schema=s.PROJECT,
        rest=Rest("PATCH", "/projects/{id}"),
        description="Change name and/or description; with neither, the project as it is.",
        audited=True,
    ),
    Package(
        14,
        "projects.delete",
        delete,
        schema=s.PROJECT_ID,
        response_schema=s.PROJECT_DELETED,
        rest=Rest("DELETE", "/projects/{id}"),
        description="Soft delete; a second delete answers the same deleted_at.",
        audited=True,
    ),
]
TOPICS = [Topic("project.{id}", project_member)]

"""Authors: ids 1 and 2 keep `authors.list` and `authors.page` for older clients."""

from __future__ import annotations

from typing import Any

from handlers import authors_sql as sql
from realtime import Context, JSONObject, Package, Page, Rest
from schema import projects as s


async def list_authors(ctx: Context, data: JSONObject) -> list[dict[str, Any]]:
    return await sql.all_authors(ctx.services.database)


async def page_authors(ctx: Context, data: JSONObject) -> Page:
    name = (data.get("filters") or {}).get("name")
    items, total = await sql.page(
        ctx.services.database, page=data["page"], per_page=data["per_page"], name=name
    )
    return Page(items, total)


async def create(ctx: Context, data: JSONObject) -> dict[str, Any]:
    return await sql.create(ctx.services.database, data["name"])


PACKAGES = [
    Package(
        1,
        "authors.list",
        list_authors,
        schema=s.EMPTY,
        response_schema={"type": "array", "items": s.AUTHOR},
        rest=Rest("GET", "/authors"),
        description=f"Every author, oldest first (at most {sql.LIST_LIMIT}).",
    ),
    Package(
        2,
        "authors.page",
        page_authors,
        schema=s.AUTHOR_PAGE,
        response_schema=s.AUTHOR,
        paginated=True,
        description="A page of authors, optionally filtered by name.",
    ),
    Package(
        3,
        "authors.create",
        create,
        schema=s.AUTHOR_CREATE,
        response_schema=s.AUTHOR,
        rest=Rest("POST", "/authors", 201),
        description="Create an author (unique name).",
        audited=True,
    ),
]

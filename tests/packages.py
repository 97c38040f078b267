"""Packages that exist only in the tests: they provoke each status code on purpose."""

from __future__ import annotations

import asyncio
from typing import Any

from realtime.exceptions import Conflict, NotFound, Unavailable
from realtime.packages import Context, Package, Page, Rest
from realtime.types import JSONObject
from tests import failing_jobs


async def sleep(ctx: Context, data: JSONObject) -> JSONObject:
    await asyncio.sleep(data["seconds"])
    return {"slept": data["seconds"]}


async def boom(ctx: Context, data: JSONObject) -> Any:
    raise RuntimeError("secret stack detail: SELECT * FROM users WHERE token='abc'")


async def missing(ctx: Context, data: JSONObject) -> Any:
    raise NotFound("no such thing")


async def conflict(ctx: Context, data: JSONObject) -> Any:
    raise Conflict("the thing changed meanwhile")


async def unavailable(ctx: Context, data: JSONObject) -> Any:
    raise Unavailable(3, "database unavailable")


async def admin_only(ctx: Context, data: JSONObject) -> JSONObject:
    return {"ok": True}


async def numbers(ctx: Context, data: JSONObject) -> Page:
    total = data["total"]
    start = (data["page"] - 1) * data["per_page"]
    return Page(list(range(start, min(start + data["per_page"], total))), total)


async def create_thing(ctx: Context, data: JSONObject) -> JSONObject:
    return {"id": data.get("id"), "name": data["name"], "flag": data.get("flag")}


async def emit_then_answer(ctx: Context, data: JSONObject) -> JSONObject:
    assert ctx.session is not None
    await ctx.session.emit("test.event", {"n": 1})
    return {"emitted": True}


NUMBER = {"type": "number", "minimum": 0, "maximum": 60}
TEST_PACKAGES = [
    Package(
        900,
        "test.sleep",
        sleep,
        schema={"type": "object", "properties": {"seconds": NUMBER}, "required": ["seconds"]},
    ),
    Package(901, "test.boom", boom, rest=Rest("GET", "/test/boom")),
    Package(902, "test.missing", missing, rest=Rest("GET", "/test/missing")),
    Package(903, "test.conflict", conflict, rest=Rest("POST", "/test/conflict")),
    Package(904, "test.unavailable", unavailable, rest=Rest("GET", "/test/unavailable")),
    Package(905, "test.admin", admin_only, rest=Rest("GET", "/test/admin")),
    Package(
        906,
        "test.numbers",
        numbers,
        paginated=True,
        rest=Rest("GET", "/test/numbers"),
        schema={
            "type": "object",
            "properties": {"total": {"type": "integer", "minimum": 0}},
            "required": ["total"],
        },
    ),
    Package(
        907,
        "test.create",
        create_thing,
        rest=Rest("POST", "/test/things/{id}", 201),
        schema={
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string", "minLength": 1, "maxLength": 10},
                "flag": {"type": "boolean"},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    ),
    Package(
        908,
        "test.sleep_rest",
        sleep,
        rest=Rest("GET", "/test/sleep"),
        schema={"type": "object", "properties": {"seconds": NUMBER}, "required": ["seconds"]},
    ),
    Package(909, "test.emit", emit_then_answer),
    Package(910, "test.nobody", admin_only),
]


async def db_sleep(ctx: Context, data: JSONObject) -> JSONObject:
    """Holds the database for `seconds` (PostgreSQL), to meet the statement timeout."""
    await ctx.services.database.fetch_val(f"SELECT pg_sleep({float(data['seconds'])})")
    return {"slept": data["seconds"]}


TEST_PACKAGES.append(
    Package(
        912,
        "test.db_sleep",
        db_sleep,
        schema={"type": "object", "properties": {"seconds": NUMBER}, "required": ["seconds"]},
    )
)


def not_json_sync(ctx: Context, data: JSONObject) -> Any:
    return {1, 2}


async def not_json_async(ctx: Context, data: JSONObject) -> Any:
    return {1, 2}


TEST_PACKAGES.extend(
    [
        Package(
            913,
            "test.not_json_sync",
            not_json_sync,
            rest=Rest("GET", "/test/not-json"),
            inline=True,
        ),
        Package(914, "test.not_json_async", not_json_async),
    ]
)

TEST_PACKAGES.extend(failing_jobs.PACKAGES)

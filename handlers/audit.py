"""The audit log: its store (AUDIT, where the framework writes the rows of every package
declared `audited=True`) and `audit.list`, a tenant's rows for its admins."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from handlers import audit_sql as sql
from realtime import AuditStore, Context, JSONObject, Package, Page, Rest
from realtime.exceptions import InvalidData
from schema import audit as s

AUDIT: AuditStore = sql  # where the framework writes the audit log's rows


DATE_TIME = re.compile(s.DATE_TIME_PATTERN)
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)


def instant(text: str) -> datetime:
    """An RFC 3339 string the schema admitted, as a UTC datetime (the rows are stored in
    UTC, and SQLite compares them as text). Every admitted string has one: a day past its
    month's end runs on into the next month, a leap second is the next second, and what
    falls outside datetime's years is its first or last instant."""
    found = DATE_TIME.fullmatch(text)
    if found is None:  # the schema checked it; Python's `$` differs only at a final newline
        raise InvalidData(f"{text!r} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second, fraction, zone, sign, zh, zm = found.groups()
    offset = 0 if zone in ("Z", "z") else (int(zh) * 60 + int(zm)) * (1 if sign == "+" else -1)
    micros = int((fraction or ".0")[1:].ljust(6, "0"))
    delta = timedelta(
        days=int(day) - 1,
        hours=int(hour),
        minutes=int(minute) - offset,
        seconds=int(second),
        microseconds=micros,
    )
    try:
        return datetime(int(year), int(month), 1, tzinfo=UTC) + delta
    except OverflowError:
        return LATEST if delta > timedelta(0) else EARLIEST


async def list_entries(ctx: Context, data: JSONObject) -> Page:
    items, total = await sql.page(
        ctx.services.database,
        ctx.principal.tenant_id,  # an admin sees their own tenant's rows only
        page=data["page"],
        per_page=data["per_page"],
        sub=data.get("sub"),
        package=data.get("package"),
        since=instant(data["since"]) if "since" in data else None,
        until=instant(data["until"]) if "until" in data else None,
    )
    return Page(items, total)


PACKAGES = [
    Package(
        25,
        "audit.list",
        list_entries,
        schema=s.AUDIT_LIST,
        response_schema=s.AUDIT_ENTRY,
        paginated=True,
        rest=Rest("GET", "/audit-logs"),
        description="The audit log of the caller's tenant, newest first (admins).",
    ),
]

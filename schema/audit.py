"""JSON Schemas of the audit log's package."""

from schema.tables import AUDIT_TARGET_MAX

# RFC 3339, with a zone (a range must not depend on the server's zone) and at most
# microseconds; handlers/audit.py reads every string this admits (a day past the end of
# its month runs on into the next one: 2026-02-30 is 2026-03-02)
DATE_TIME_PATTERN = (
    "^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])"
    "-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)"
    "(\\.[0-9]{1,6})?([Zz]|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))$"
)
DATE_TIME = {
    "type": "string",
    "pattern": DATE_TIME_PATTERN,
    "description": "RFC 3339 date-time with a zone, e.g. 2026-12-01T17:00:00Z",
}
# PostgreSQL cannot compare text with NUL in it: refused on both engines alike
NO_NUL = "^[^\\x00]*$"
NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": NO_NUL}

AUDIT_LIST = {
    "type": "object",
    "properties": {
        "sub": NAME,
        "package": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": NO_NUL},
        "since": {**DATE_TIME, "description": "rows at or after this time"},
        "until": {**DATE_TIME, "description": "rows before this time"},
    },
    "additionalProperties": False,
}

AUDIT_ENTRY = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "tenant_id": {"type": "string"},
        "sub": {"type": "string"},
        "package": {"type": "string"},
        "target": {"type": ["string", "null"], "maxLength": AUDIT_TARGET_MAX},
        "transport": {"enum": ["ws", "rest"]},
        "req_id": {"type": ["string", "null"]},
        "node": {"type": "string"},
        "outcome": {"type": "string"},
    },
    "required": [
        "id",
        "at",
        "tenant_id",
        "sub",
        "package",
        "target",
        "transport",
        "req_id",
        "node",
        "outcome",
    ],
}

"""JSON Schemas of the project and author packages."""

from schema.common import IDEMPOTENCY_KEY
from schema.tables import AUTHOR_NAME_MAX, PROJECT_DESCRIPTION_MAX, PROJECT_NAME_MAX

ID_MAX = 2_147_483_647  # the column's integer range
ID = {"type": "integer", "minimum": 1, "maximum": ID_MAX}
# PostgreSQL cannot store NUL in text: refuse it on both engines, with the same answer
NO_NUL = "^[^\\x00]*$"
NAME = {"type": "string", "minLength": 1, "maxLength": PROJECT_NAME_MAX, "pattern": NO_NUL}
DESCRIPTION = {"type": ["string", "null"], "maxLength": PROJECT_DESCRIPTION_MAX, "pattern": NO_NUL}
TIMESTAMP = {"type": "string", "format": "date-time"}

PROJECT = {
    "type": "object",
    "properties": {
        "id": ID,
        # the owning tenant (the caller's: a project of another tenant is never answered)
        "tenant_id": {"type": "string"},
        "name": NAME,
        "description": DESCRIPTION,
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "is_deleted": {"type": "boolean"},
        "deleted_at": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": [
        "id",
        "tenant_id",
        "name",
        "description",
        "created_at",
        "updated_at",
        "is_deleted",
        "deleted_at",
    ],
}

PROJECT_CREATE = {
    "type": "object",
    "properties": {"name": NAME, "description": DESCRIPTION, "idempotency_key": IDEMPOTENCY_KEY},
    "required": ["name"],
    "additionalProperties": False,
}

PROJECT_LIST = {
    "type": "object",
    "properties": {
        "search": {"type": "string", "maxLength": PROJECT_NAME_MAX, "pattern": NO_NUL},
        "include_deleted": {"type": "boolean", "default": False},
        "order": {"enum": ["newest", "oldest"], "default": "newest"},
    },
    "additionalProperties": False,
}

PROJECT_ID = {
    "type": "object",
    "properties": {"id": ID},
    "required": ["id"],
    "additionalProperties": False,
}

PROJECT_UPDATE = {
    "type": "object",
    "properties": {"id": ID, "name": NAME, "description": DESCRIPTION},
    "required": ["id"],
    "additionalProperties": False,
}

PROJECT_DELETED = {
    "type": "object",
    "properties": {"id": ID, "deleted_at": TIMESTAMP},
    "required": ["id", "deleted_at"],
}

AUTHOR = {
    "type": "object",
    "properties": {
        "id": ID,
        "name": {"type": "string"},
        "created_at": TIMESTAMP,
    },
    "required": ["id", "name", "created_at"],
}

AUTHOR_CREATE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": AUTHOR_NAME_MAX, "pattern": NO_NUL}
    },
    "required": ["name"],
    "additionalProperties": False,
}

AUTHOR_PAGE = {
    "type": "object",
    "properties": {
        "filters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": AUTHOR_NAME_MAX, "pattern": NO_NUL}
            },
            "additionalProperties": False,
        }
    },
    "additionalProperties": False,
}

EMPTY = {"type": "object", "additionalProperties": False}

"""JSON Schemas shared by several packages."""

from schema.tables import IDEMPOTENCY_KEY_MAX

# a client's key for a write it may have to retry: the retry returns the first result
IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX,
    "pattern": "^[A-Za-z0-9_.:-]+$",
    "description": "retry-safe: a retry with the same key returns the first result",
}

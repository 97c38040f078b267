"""JSON Schemas of the system packages."""

ECHO = {"type": "object"}

NO_DATA = {"type": "object", "additionalProperties": False}

ME_RESPONSE = {
    "type": "object",
    "properties": {
        "sub": {"type": "string"},
        "username": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "name": {"type": ["string", "null"]},
        "realm_roles": {"type": "array", "items": {"type": "string"}},
        "client_roles": {"type": "object"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "tenant_id": {"type": "string"},
        "expires_at": {"type": "integer"},
    },
    "required": ["sub", "roles", "tenant_id", "expires_at"],
}

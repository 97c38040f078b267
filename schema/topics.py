"""JSON Schemas of the topic packages."""

from schema.common import IDEMPOTENCY_KEY

TOPIC = {"type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,200}$"}
OFFSET = {"type": "string", "maxLength": 100}

SUBSCRIBE = {
    "type": "object",
    "properties": {"topic": TOPIC, "since": OFFSET, "presence": {"type": "boolean"}},
    "required": ["topic"],
    "additionalProperties": False,
}
MEMBERS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"sub": {"type": "string"}, "name": {"type": ["string", "null"]}},
    },
}
SUBSCRIBED = {
    "type": "object",
    "properties": {
        "topic": TOPIC,
        "offset": OFFSET,
        "recovered": {"type": "boolean"},
        "presence": MEMBERS,  # with `presence: true` only
        "presence_capped": {"type": "boolean"},
    },
    "required": ["topic", "offset", "recovered"],
}
TOPIC_ONLY = {
    "type": "object",
    "properties": {"topic": TOPIC},
    "required": ["topic"],
    "additionalProperties": False,
}
PUBLISH = {
    "type": "object",
    "properties": {"topic": TOPIC, "data": {}, "idempotency_key": IDEMPOTENCY_KEY},
    "required": ["topic", "data"],
    "additionalProperties": False,
}
PUBLISHED = {
    "type": "object",
    "properties": {"topic": TOPIC, "offset": OFFSET},
    "required": ["topic", "offset"],
}
PRESENCE = {
    "type": "object",
    "properties": {
        "topic": TOPIC,
        "presence": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sub": {"type": "string"}, "name": {"type": ["string", "null"]}},
            },
        },
    },
    "required": ["topic", "presence"],
}

HISTORY_LIMIT = 100
HISTORY = {
    "type": "object",
    "properties": {
        "topic": TOPIC,
        "since": OFFSET,
        "limit": {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT, "default": 20},
        "reverse": {"type": "boolean", "default": False},
    },
    "required": ["topic"],
    "additionalProperties": False,
}
HISTORY_PAGE = {
    "type": "object",
    "properties": {
        "topic": TOPIC,
        "offset": OFFSET,
        "publications": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"offset": OFFSET, "event": {"type": "string"}, "data": {}},
                "required": ["offset", "event", "data"],
            },
        },
        "next": {"type": ["string", "null"], "maxLength": 100},
        "more": {"type": "boolean"},
    },
    "required": ["topic", "offset", "publications", "next", "more"],
}

EMPTY = {"type": "object", "additionalProperties": False}
CHANNELS = {
    "type": "object",
    "properties": {
        "channels": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"topic": TOPIC, "offset": OFFSET},
                "required": ["topic", "offset"],
            },
        }
    },
    "required": ["channels"],
}

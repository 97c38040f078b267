"""Wire constants and the envelope codec (PROTOCOL.md 2).

Encoding is done once per message with orjson; fan-out reuses the bytes.
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from realtime import jsonparse
from realtime.types import JSONObject

REQ_ID_MAX = 64


class Status(enum.IntEnum):
    OK = 0
    ERROR = 1
    INVALID_DATA = 2
    PERMISSION_DENIED = 3
    NOT_FOUND = 4
    RATE_LIMITED = 5
    UNKNOWN_PACKAGE = 6
    TIMEOUT = 7
    CONFLICT = 8
    UNAVAILABLE = 9


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    UNAUTHENTICATED = 4401
    FORBIDDEN_ORIGIN = 4403
    TOO_MANY_SOCKETS = 4409
    DISCONNECTED = 4410
    RATE_LIMIT = 4429


# a parsed request envelope: (pkg_id, req_id, data); `pkg_id` is checked against the
# catalog later. A plain tuple: the hot path builds one per frame
Request = tuple[int, str, JSONObject]


class EnvelopeError(ValueError):
    """The frame is not a usable request; `req_id` is set when one could be read."""

    def __init__(self, reason: str, req_id: str | None = None, pkg_id: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.req_id = req_id
        self.pkg_id = pkg_id if _is_int(pkg_id) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(text: str | bytes) -> Request:
    """Parse one text frame into a Request or raise EnvelopeError."""
    try:
        frame = jsonparse.loads(text)
    except orjson.JSONDecodeError:
        raise EnvelopeError("frame is not valid JSON") from None
    except jsonparse.JSONRefused as refused:
        raise _refused(refused) from None
    # exact type checks: orjson builds plain dicts, lists, ints and strs (and bool is no int)
    if type(frame) is not dict:
        raise EnvelopeError("frame must be a JSON object")
    req_id = frame.get("req_id")
    pkg_id = frame.get("pkg_id")
    if type(req_id) is not str or not 0 < len(req_id) <= REQ_ID_MAX:
        raise EnvelopeError(
            f"req_id must be a string of 1 to {REQ_ID_MAX} characters", pkg_id=pkg_id
        )
    if type(pkg_id) is not int:
        raise EnvelopeError("pkg_id must be an integer", req_id)
    data = frame.get("data")
    if data is None:
        data = {}
    elif type(data) is not dict:
        raise EnvelopeError("data must be a JSON object", req_id, pkg_id)
    return pkg_id, req_id, data


def _refused(refused: jsonparse.JSONRefused) -> EnvelopeError:
    """Valid JSON over a limit: answered with the frame's ids when it has usable ones."""
    frame = refused.value
    req_id = frame.get("req_id") if type(frame) is dict else None
    if type(req_id) is not str or not 0 < len(req_id) <= REQ_ID_MAX:
        return EnvelopeError(refused.reason)
    return EnvelopeError(refused.reason, req_id, frame.get("pkg_id"))


def encode_ok(pkg_id: int | None, req_id: str, data: Any, meta: Any = None) -> bytes:
    message: dict[str, Any] = {"pkg_id": pkg_id, "req_id": req_id, "status_code": 0, "data": data}
    if meta is not None:
        message["meta"] = meta
    return orjson.dumps(message)


def encode_error(
    pkg_id: int | None, req_id: str | None, status: Status, error: dict[str, Any]
) -> bytes:
    return orjson.dumps(
        {"pkg_id": pkg_id, "req_id": req_id, "status_code": int(status), "error": error}
    )


def encode_rest_error(status: Status, error: dict[str, Any]) -> bytes:
    """The body of a REST error answer (PROTOCOL.md 4): `{"status_code", "error"}`; its
    HTTP status comes from realtime.exceptions' table."""
    return orjson.dumps({"status_code": int(status), "error": error})


# the JSON Schema of that body (OpenAPI's `Error` component)
REST_ERROR_SCHEMA: JSONObject = {
    "type": "object",
    "properties": {
        "status_code": {"type": "integer"},
        "error": {
            "type": "object",
            "properties": {"message": {"type": "string"}, "details": {}},
            "required": ["message"],
        },
    },
    "required": ["status_code", "error"],
}


# the events the server pushes (their data: EVENTS below)
MESSAGE = "message"
JOB_PROGRESS = "job.progress"
JOB_DONE = "job.done"
AUTH_EXPIRING = "auth.expiring"
SERVER_DRAINING = "server.draining"
SUBSCRIPTION_RECOVERED = "subscription.recovered"
PRESENCE_JOIN = "presence.join"
PRESENCE_LEAVE = "presence.leave"


# every socket is subscribed by the server to its user's personal channel
PERSONAL_PREFIX = "user."
# a job's progress and end are published on job:<id> (realtime.jobs.steps.job_topic)
JOB_TOPIC_PREFIX = "job:"


def personal_topic(tenant: str, sub: str) -> str:
    """`user.<tenant>.<sub>`: one per caller, and the same `sub` in another tenant is
    another caller (docs/protocol.md, Roles). A tenant id holding a `.` would make the
    name ambiguous: such sockets get no personal channel (realtime.channels)."""
    return f"{PERSONAL_PREFIX}{tenant}.{sub}"


def encode_event(event: str, data: Any, **fields: Any) -> bytes:
    return orjson.dumps({"event": event, **fields, "data": data})


def message_frame(topic: str, epoch: str, seq: int, name: bytes, data: bytes) -> bytes:
    """A topic event, `{"event", "topic", "offset", "data"}`, from the event's name and the
    JSON of its data as the publisher serialized it once (a byte template: the fan-out
    builds one per event and node, never re-encoding the data)."""
    return b'{"event":"%s","topic":%s,"offset":"%s:%d","data":%s}' % (
        name,
        orjson.dumps(topic),
        epoch.encode(),
        seq,
        data,
    )


def recovered_frame(topic: str, recovered: bool, offset: str) -> bytes:
    """`subscription.recovered`: whether the subscription continued without a gap."""
    data = {"recovered": recovered, "offset": offset}
    return encode_event(SUBSCRIPTION_RECOVERED, data, topic=topic)


def _object(properties: dict[str, Any], required: list[str]) -> JSONObject:
    return {"type": "object", "properties": properties, "required": required}


_OFFSET = {"type": "string", "description": "opaque position in the topic's stream"}
# a job's states (realtime.jobs.store); the last three are final, told once by job.done
JOB_FINAL_STATES = ("SUCCESS", "FAILURE", "CANCELLED")
_JOB_STATES = ["PENDING", "STARTED", *JOB_FINAL_STATES]

# The data of every event the server pushes (PROTOCOL.md 2.4, docs/protocol.md Events):
# name -> (JSON Schema of `data`, the frame's fields beside `event` and `data`). The
# AsyncAPI document and the generated client types are made from this table.
_ON_TOPIC = ("topic", "offset")
_MEMBER = _object({"sub": {"type": "string"}, "name": {"type": ["string", "null"]}}, ["sub"])
EVENTS: dict[str, tuple[JSONObject, tuple[str, ...]]] = {
    MESSAGE: ({"description": "what was published on the topic"}, _ON_TOPIC),
    JOB_PROGRESS: (
        _object(
            {
                "job_id": {"type": "string"},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "step": {"type": "integer"},
                "total_steps": {"type": "integer"},
                "payload": {},
            },
            ["job_id", "progress", "step", "total_steps"],
        ),
        _ON_TOPIC,
    ),
    JOB_DONE: (
        _object(
            {
                "job_id": {"type": "string"},
                "state": {"enum": list(JOB_FINAL_STATES)},
                "result": {},
                "error": {"type": "string"},
            },
            ["job_id", "state"],
        ),
        _ON_TOPIC,
    ),
    AUTH_EXPIRING: (_object({"expires_in": {"type": "integer"}}, ["expires_in"]), ()),
    SERVER_DRAINING: (_object({}, []), ()),
    PRESENCE_JOIN: (_MEMBER, ("topic",)),
    PRESENCE_LEAVE: (_MEMBER, ("topic",)),
    SUBSCRIPTION_RECOVERED: (
        _object({"recovered": {"type": "boolean"}, "offset": _OFFSET}, ["recovered", "offset"]),
        ("topic",),
    ),
}


def event_frame_schema(name: str) -> JSONObject:
    """The JSON Schema of a whole event frame: `{"event", ["topic", "offset"], "data"}`."""
    data, fields = EVENTS[name]
    field_schemas = {"topic": {"type": "string"}, "offset": _OFFSET}
    properties = {"event": {"const": name}, **{f: field_schemas[f] for f in fields}, "data": data}
    return _object(properties, ["event", *fields, "data"])

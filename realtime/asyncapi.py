"""AsyncAPI 3.0 for the socket, generated from the same declarations as /packages and
/openapi.json: every package is a `send` operation with its reply, every event a `receive`
operation, and every topic pattern of permissions.toml a channel.

The socket is one channel (`/ws`); a topic is a channel too, whose messages arrive on the
socket as `message` events after `topics.subscribe`.
"""

from __future__ import annotations

import re
from typing import Any

from realtime.dispatch import Dispatcher
from realtime.packages import Catalog, Package
from realtime.protocol import EVENTS, REQ_ID_MAX, Status, event_frame_schema
from realtime.topics import TopicPermissions
from realtime.types import JSONObject, Roles

SOCKET = "#/channels/socket"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_REQ_ID = {"type": "string", "minLength": 1, "maxLength": REQ_ID_MAX}


def key(name: str) -> str:
    """A component key AsyncAPI accepts (`projects.create` -> `projects_create`)."""
    return _UNSAFE.sub("_", name)


def _request(package: Package) -> JSONObject:
    payload = {
        "type": "object",
        "properties": {
            "pkg_id": {"const": package.id},
            "req_id": _REQ_ID,
            "data": package.request_schema(),
        },
        "required": ["pkg_id", "req_id"],
    }
    return {"name": package.name, "title": f"{package.name} request", "payload": payload}


def _answer(package: Package) -> JSONObject:
    properties: dict[str, Any] = {
        "pkg_id": {"const": package.id},
        "req_id": _REQ_ID,
        "status_code": {"const": int(Status.OK)},
    }
    if package.paginated:
        answer = package.answer_schema()["properties"]
        properties |= {"data": answer["data"], "meta": answer["meta"]}
    else:
        properties["data"] = dict(package.response_schema or {})
    payload = {"type": "object", "properties": properties, "required": [*properties]}
    return {"name": f"{package.name} answer", "payload": payload}


def _error() -> JSONObject:
    codes = [int(status) for status in Status if status is not Status.OK]
    payload = {
        "type": "object",
        "properties": {
            "pkg_id": {"type": ["integer", "null"]},
            "req_id": {"type": ["string", "null"]},
            "status_code": {"enum": codes},
            "error": {
                "type": "object",
                "properties": {"message": {"type": "string"}, "details": {}},
                "required": ["message"],
            },
        },
        "required": ["pkg_id", "req_id", "status_code", "error"],
    }
    names = ", ".join(f"{int(s)} {s.name}" for s in Status if s is not Status.OK)
    return {"name": "error answer", "summary": f"status codes: {names}", "payload": payload}


def _operations(catalog: Catalog, dispatcher: Dispatcher) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    error_ref = {"$ref": f"{SOCKET}/messages/error"}
    for package in catalog:
        name = key(package.name)
        operations[name] = {
            "action": "send",
            "channel": {"$ref": SOCKET},
            "summary": package.description or package.name,
            "description": f"pkg_id {package.id}; roles: {sorted(dispatcher.roles(package))}",
            "messages": [{"$ref": f"{SOCKET}/messages/{name}"}],
            "reply": {
                "channel": {"$ref": SOCKET},
                "messages": [{"$ref": f"{SOCKET}/messages/{name}_answer"}, error_ref],
            },
        }
    for event in EVENTS:
        operations[f"event_{key(event)}"] = {
            "action": "receive",
            "channel": {"$ref": SOCKET},
            "messages": [{"$ref": f"{SOCKET}/messages/event_{key(event)}"}],
        }
    return operations


def _socket_messages(catalog: Catalog) -> dict[str, Any]:
    messages: dict[str, Any] = {"error": _error()}
    for package in catalog:
        messages[key(package.name)] = _request(package)
        messages[f"{key(package.name)}_answer"] = _answer(package)
    for event in EVENTS:
        messages[f"event_{key(event)}"] = {"name": event, "payload": event_frame_schema(event)}
    return messages


def _topic_channel(pattern: str, actions: dict[str, Roles]) -> JSONObject:
    segments = iter(range(1, 100))
    address = re.sub(r"\*", lambda _: f"{{segment{next(segments)}}}", pattern)
    names = re.findall(r"\{(\w+)\}", address)
    who = "; ".join(f"{action}: {sorted(roles)}" for action, roles in sorted(actions.items()))
    channel: JSONObject = {
        "address": address,
        "description": f"topic pattern `{pattern}` (permissions.toml); {who or 'nobody'}. "
        "{sub} and {tenant} are the caller's own; subscribe with topics.subscribe.",
        "messages": {"message": {"name": "message", "payload": event_frame_schema("message")}},
    }
    if names:
        channel["parameters"] = {name: {"description": f"the topic's {name}"} for name in names}
    return channel


def document(
    catalog: Catalog, dispatcher: Dispatcher, topics: TopicPermissions, version: str
) -> JSONObject:
    channels: dict[str, Any] = {
        "socket": {
            "address": "/ws",
            "description": "One multiplexed socket: requests, answers and events (/web too).",
            "messages": _socket_messages(catalog),
        }
    }
    operations = _operations(catalog, dispatcher)
    for pattern, actions in topics.patterns().items():
        name = f"topic_{key(pattern)}"
        channels[name] = _topic_channel(pattern, actions)
        operations[f"{name}_receive"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "messages": [{"$ref": f"#/channels/{name}/messages/message"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "realtime",
            "version": version,
            "description": "The realtime socket: packages by pkg_id, answers by req_id, "
            "events pushed on the same socket (see /packages and docs/protocol.md).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "pathname": "/ws",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Authorization header, a `bearer.<jwt>` subprotocol "
                    "beside `realtime.v1`, or a first frame auth.refresh {token}.",
                }
            }
        },
    }

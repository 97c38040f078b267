"""OpenAPI 3.1 for the REST mount, generated from the same package schemas and routes.

OpenAPI 3.1 speaks JSON Schema 2020-12, so package schemas are used as they are: path
parameters become path parameters, the other properties become query parameters (GET,
DELETE) or the JSON body (POST, PUT, PATCH). The error responses are derived from the
table of realtime.exceptions: no code is written here.
"""

from __future__ import annotations

import re
from typing import Any

from realtime.dispatch import Dispatcher
from realtime.exceptions import (
    AuthError,
    BodyTooLarge,
    InvalidData,
    RealtimeError,
    RetryLater,
    Unavailable,
    rest_errors,
    wire_of,
)
from realtime.packages import META_SCHEMA, Catalog, Package
from realtime.protocol import REST_ERROR_SCHEMA
from realtime.types import JSONObject

PATH_PARAM = re.compile(r"{(\w+)(?::\w+)?}")
BODY_METHODS = {"POST", "PUT", "PATCH"}
SCALARS = {"string", "integer", "number", "boolean"}
ERROR: JSONObject = {"$ref": "#/components/schemas/Error"}
# what POST /auth/login answers besides its token (docs/protocol.md, REST); the codes
# are the table's
LOGIN_ERRORS: list[type[RealtimeError]] = [AuthError, InvalidData, BodyTooLarge, Unavailable]


def _json(schema: JSONObject) -> JSONObject:
    return {"application/json": {"schema": schema}}


def _is_scalar(spec: JSONObject) -> bool:
    kinds = spec.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return "enum" in spec or any(kind in SCALARS for kind in kinds)


def _without(schema: JSONObject, names: list[str]) -> JSONObject:
    body = dict(schema)
    if "properties" in schema:
        body["properties"] = {k: v for k, v in schema["properties"].items() if k not in names}
    if "required" in schema:
        body["required"] = [k for k in schema["required"] if k not in names]
    if "anyOf" in schema:
        body["anyOf"] = [_without(option, names) for option in schema["anyOf"]]
    return body


def _parameters(package: Package, path_names: list[str], method: str) -> list[JSONObject]:
    schema = package.request_schema()
    props, required = schema.get("properties", {}), set(schema.get("required", []))
    params = [
        {"name": n, "in": "path", "required": True, "schema": props.get(n, {})} for n in path_names
    ]
    if method not in BODY_METHODS:
        params += [
            {"name": name, "in": "query", "required": name in required, "schema": spec}
            for name, spec in props.items()
            if name not in path_names and _is_scalar(spec)
        ]
    return params


def _errors(classes: list[type[RealtimeError]]) -> dict[str, JSONObject]:
    """The error responses of an operation that can answer `classes`: one per HTTP
    status of their rows in realtime.exceptions' table, described by those rows."""
    by_http: dict[int, list[type[RealtimeError]]] = {}
    for cls in classes:
        http = wire_of(cls).http
        if http is not None:
            by_http.setdefault(http, []).append(cls)
    return {str(http): _error(group) for http, group in sorted(by_http.items())}


def _error(group: list[type[RealtimeError]]) -> JSONObject:
    rows = [wire_of(cls) for cls in group]
    texts = [row.text if row.status is None else f"{row.status.name}: {row.text}" for row in rows]
    description = " | ".join(dict.fromkeys(texts))
    if any(issubclass(cls, RetryLater) for cls in group):
        description += " (see Retry-After)"
    return {"description": description, "content": _json(ERROR)}


def _success(package: Package) -> JSONObject:
    schema = package.answer_schema({"$ref": "#/components/schemas/Meta"})
    return {"description": "OK", "content": _json(schema)}


def _operation(package: Package, roles: list[str]) -> JSONObject:
    assert package.rest is not None
    method = package.rest.method
    path_names = PATH_PARAM.findall(package.rest.path)
    responses = {str(package.rest.status): _success(package)}
    responses |= _errors(rest_errors(body=method in BODY_METHODS))
    operation: JSONObject = {
        "operationId": package.name,
        "summary": package.description or package.name,
        "description": f"Package `{package.name}` (pkg_id {package.id}); roles: {roles}.",
        "parameters": _parameters(package, path_names, method),
        "responses": responses,
        "security": [{"bearerAuth": []}],
        "x-pkg-id": package.id,
    }
    if method in BODY_METHODS:
        body = _without(package.request_schema(), path_names)
        operation["requestBody"] = {"required": bool(body.get("required")), "content": _json(body)}
    return operation


def _public() -> JSONObject:
    login_body = {
        "type": "object",
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        "required": ["username", "password"],
    }
    token = {
        "type": "object",
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string"},
            "expires_in": {"type": "integer"},
        },
        "required": ["access_token", "token_type"],
    }
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": {"description": "alive", "content": _json({"type": "object"})}
                },
            }
        },
        "/ready": {
            "get": {
                "operationId": "ready",
                "security": [],
                "responses": {
                    "200": {"description": "ready", "content": _json({"type": "object"})},
                    "503": {"description": "not ready", "content": _json({"type": "object"})},
                },
            }
        },
        "/packages": {
            "get": {
                "operationId": "packages",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the package catalog",
                        "content": _json({"type": "array", "items": {"type": "object"}}),
                    }
                },
            }
        },
        "/auth/login": {
            "post": {
                "operationId": "login",
                "security": [],
                "requestBody": {"required": True, "content": _json(login_body)},
                "responses": {
                    "200": {"description": "an access token", "content": _json(token)},
                    **_errors(LOGIN_ERRORS),
                },
            }
        },
    }


def document(catalog: Catalog, dispatcher: Dispatcher, version: str) -> JSONObject:
    paths: dict[str, Any] = _public()
    for package in catalog:
        if package.rest is not None:
            path = PATH_PARAM.sub(r"{\1}", package.rest.path)
            operation = _operation(package, sorted(dispatcher.roles(package)))
            paths.setdefault(path, {})[package.rest.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "realtime",
            "version": version,
            "description": "The REST mount of the realtime packages (see /packages).",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {"Error": REST_ERROR_SCHEMA, "Meta": META_SCHEMA},
        },
        "security": [{"bearerAuth": []}],
    }


SWAGGER_UI = """<!doctype html>
<html><head><meta charset="utf-8"><title>realtime API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""

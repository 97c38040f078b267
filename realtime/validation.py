"""Payload validation with a compiled JSON Schema validator (jsonschema-rs)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs

from realtime.exceptions import ConfigError, InvalidData
from realtime.types import JSONObject, Schema

MAX_REASON = 200


class Validator:
    """Validates one package's data; every failing field is reported."""

    def __init__(self, schema: Schema, where: str) -> None:
        try:
            self._validator = jsonschema_rs.validator_for(dict(schema))
        except (ValueError, jsonschema_rs.ValidationError) as error:
            raise ConfigError(f"{where}: invalid JSON Schema: {error}") from None
        self._defaults = _top_level_defaults(schema)
        # {"type": "object"} accepts every envelope's data (already a JSON object)
        self.trivial = dict(schema) == {"type": "object"}

    def __call__(self, data: JSONObject) -> JSONObject:
        if self.trivial:
            return data
        if not self._validator.is_valid(data):
            raise InvalidData("data does not match the package schema", self.errors(data))
        if self._defaults:
            return {**self._defaults, **data}
        return data

    def errors(self, data: JSONObject) -> list[dict[str, str]]:
        return [
            {"path": _pointer(error.instance_path), "reason": error.message[:MAX_REASON]}
            for error in self._validator.iter_errors(data)
        ]


def _pointer(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path) if path else "/"


def _top_level_defaults(schema: Schema) -> JSONObject:
    properties = schema.get("properties", {})
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}

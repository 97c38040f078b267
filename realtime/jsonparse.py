"""JSON from clients (socket frames, REST bodies): orjson, and two limits it does not keep.

- Depth: orjson parses 1024 levels but writes at most 254, so deeper data was accepted,
  reached the handler, and failed only when the answer was encoded (ERROR, a traceback
  per frame). More than `MAX_DEPTH` levels is refused before anything runs; the margin
  leaves room for answers and events that wrap what a client sent.
- Integers: orjson reads an integer outside -2**63 .. 2**64-1 as a float, silently
  (and cannot write it back as an integer). Such an integer is refused instead.

Both checks cost a byte translation and a substring search on the common path (~0.4 us a
frame); the exact (slower) check runs only when the cheap one says it may be needed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MAX_DEPTH = 128
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"
INT_RANGE = "integer outside the 64-bit range (-2^63 to 2^64-1)"

# digits -> "0" and "{" -> "[": one pass finds the runs of 19 digits (an integer of 18
# digits always fits; -2**63 has 19, 2**64-1 has 20) and counts the containers
_SCAN = bytes.maketrans(b"123456789{", b"000000000[")
_LONG_RUN = "0" * 19
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# an integer literal of 19 digits or more: not a fraction's or an exponent's digits
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{19,}(?![0-9.eE])")


class JSONRefused(ValueError):
    """Valid JSON over a limit; `value` is what orjson made of it (for the envelope's ids)."""

    def __init__(self, reason: str, value: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


def loads(raw: str | bytes) -> Any:
    """Parse; orjson.JSONDecodeError when it is not JSON, JSONRefused over a limit."""
    value = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    # searched as a str: bytes' `in`, find and count cost three times as much here
    scanned = data.translate(_SCAN).decode("latin-1")
    if _LONG_RUN in scanned and _has_long_integer(data):
        raise JSONRefused(INT_RANGE, value)
    # more than MAX_DEPTH levels take as many opening brackets (and as many closing ones)
    if len(data) > 2 * MAX_DEPTH and scanned.count("[") > MAX_DEPTH and _too_deep(value):
        raise JSONRefused(TOO_DEEP, value)
    return value


def _has_long_integer(data: bytes) -> bool:
    outside_strings = _STRING.sub(b'""', data)
    return any(
        not INT_MIN <= int(match) <= INT_MAX for match in _LONG_INTEGER.findall(outside_strings)
    )


def _too_deep(value: Any) -> bool:
    """More than MAX_DEPTH levels of objects and arrays (the document itself is level 1),
    walked a level at a time (no recursion, whatever the depth)."""
    level = [value] if type(value) is dict or type(value) is list else []
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True

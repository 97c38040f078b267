"""Type aliases shared across realtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

JSON: TypeAlias = Any
JSONObject: TypeAlias = dict[str, Any]
Schema: TypeAlias = Mapping[str, Any]
Roles: TypeAlias = frozenset[str]
SendBytes: TypeAlias = Callable[[bytes], Awaitable[None]]

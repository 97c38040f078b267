"""Keep tokens out of every log record.

A token reaches the server in a header, a `bearer.` subprotocol or the query string, and
uvicorn and websockets log request lines, headers (at DEBUG) and handshake failures
(with the offending header in the traceback). So every record is cleaned as it is made,
by a log record factory, whatever its logger, level or handlers: its arguments, its
message, its traceback and its stack. A query string is read the way the server reads
it: a parameter whose name decodes to `token` (`%74oken=`) is redacted however its name
and value are spelled, and a JWT is recognised in any parameter also when
percent-encoded. The log config of `realtime serve` puts the same cleaning on every
handler, for records made without the factory.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson

REDACTED = "[redacted]"
# a compact JWS: a base64url JSON header (`{"` or `{` and white space: "ey", "ew"), a
# payload and a signature
_JWT = re.compile(r"e[wy][A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_PATTERNS = (
    (re.compile(r"((?:access_)?token=)[^&\s\"']+", re.IGNORECASE), rf"\1{REDACTED}"),
    (re.compile(r"(bearer(?:\.|\s+))[A-Za-z0-9._~+/=%-]{8,}", re.IGNORECASE), rf"\1{REDACTED}"),
    (_JWT, "[redacted-jwt]"),
)
# a query string in a request line, a path or a URL: up to white space or a quote
_QUERY = re.compile(r"\?([^\s\"'<>#]+)")
_PLAIN = (int, float, bool, type(None))


def redact(text: str) -> str:
    text = _QUERY.sub(_redact_query, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_query(match: re.Match[str]) -> str:
    return "?" + "&".join(_redact_parameter(part) for part in match.group(1).split("&"))


def _redact_parameter(part: str) -> str:
    """`name=value` as the server decodes it: a `...token` name, or a value that decodes
    to a JWT, keeps its spelled name and loses its value."""
    name, equals, value = part.partition("=")
    if not equals:
        return part
    if unquote_plus(name).lower().endswith("token") or _JWT.search(unquote_plus(value)):
        return f"{name}={REDACTED}"
    return part


def clean(record: logging.LogRecord) -> None:
    """Redact one record in place. The arguments are cleaned one by one, so formatters
    that read them (uvicorn's access log unpacks its five) keep working."""
    if isinstance(record.args, tuple):
        record.args = tuple(_clean_value(value) for value in record.args)
    elif isinstance(record.args, Mapping):
        record.args = {key: _clean_value(value) for key, value in record.args.items()}
    _clean_message(record)
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    text = str(value)  # an object (an exception, headers): replaced only if it held a token
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def _clean_message(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return  # arguments that do not fit the message: the handler reports it, as always
    cleaned = redact(message)
    if cleaned != message:  # a token the arguments did not hold alone (or in `msg` itself)
        record.msg, record.args = cleaned, None


class RedactTokens(logging.Filter):
    """The same cleaning as a filter, for the handlers of a log config."""

    def filter(self, record: logging.LogRecord) -> bool:
        clean(record)
        return True


class ClientFaultsQuiet(logging.Filter):
    """uvicorn logs a text frame of invalid UTF-8 as an ERROR with a traceback, once per
    connection, unauthenticated ones included: a cheap way for any client to flood the
    error log with its own fault. It becomes one INFO line without the traceback (uvicorn
    still closes the socket with 1007). On uvicorn's error logger, whose level decides."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or record.getMessage() not in self.MESSAGES:
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


class JsonFormatter(logging.Formatter):
    """REALTIME_LOG_FORMAT=json: one JSON object per line. `time` (UTC, ISO 8601),
    `level`, `logger`, `message`, `node`, and where the record knows them (a logging
    call's `extra`) `req_id`, `sub`, `package`, `status`, `duration_ms`; uvicorn's access
    lines add `method`, `path` and `status`. The message and traceback are redacted once
    more here, whatever made the record."""

    FIELDS = ("req_id", "sub", "package", "status", "duration_ms")

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "node": self.node,
        }
        for field in self.FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        args = record.args
        # uvicorn's access line: client, method, path, HTTP version, status
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            entry.update(method=args[1], path=args[2], status=args[4])
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        return orjson.dumps(entry, default=str).decode()


class _RedactingFactory:
    """Wraps the process's log record factory: each record is cleaned as it is made."""

    def __init__(self, make: Callable[..., logging.LogRecord]) -> None:
        self._make = make

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._make(*args, **kwargs)
        clean(record)
        return record


def install_redaction() -> None:
    """Clean every record of the process from now on, every logger and level; and quiet
    the client faults uvicorn logs as errors (ClientFaultsQuiet). Idempotent."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, _RedactingFactory):
        logging.setLogRecordFactory(_RedactingFactory(factory))
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultsQuiet) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(ClientFaultsQuiet())


def log_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's default logging config, with the redaction filter on every handler;
    `json`: every line a JSON object (JsonFormatter)."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG}
    if log_format == "json":
        json_formatter = {"()": "realtime.logs.JsonFormatter"}
        config["formatters"] = {name: json_formatter for name in LOGGING_CONFIG["formatters"]}
    config["filters"] = {
        "redact": {"()": "realtime.logs.RedactTokens"},
        "client_faults": {"()": "realtime.logs.ClientFaultsQuiet"},
    }
    config["handlers"] = {
        name: {**handler, "filters": ["redact"]}
        for name, handler in LOGGING_CONFIG["handlers"].items()
    }
    config["loggers"] = {
        **LOGGING_CONFIG["loggers"],
        "uvicorn.error": {
            **LOGGING_CONFIG["loggers"]["uvicorn.error"],
            "filters": ["client_faults"],
        },
        "realtime": {
            "handlers": ["default"],
            "level": level.upper(),
            "propagate": False,
        },
    }
    return config


def configure_logging(level: str, log_format: str = "text") -> None:
    """Logging for the processes that are not uvicorn (worker, scheduler): the same
    format and filters, and taskiq's own messages at warning and above."""
    import logging.config

    config = log_config(level, log_format)
    config["loggers"]["taskiq"] = {"handlers": ["default"], "level": "WARNING"}
    logging.config.dictConfig(config)
    install_redaction()

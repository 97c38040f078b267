"""Keep tokens out of every log line.

uvicorn's access and error logs print the handshake path with its query string, so a
`?token=` would land in the logs; a filter rewrites such records before any handler
formats them. Installed on uvicorn's loggers by the app factory and on the handlers of
the log config used by `realtime serve`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_PATTERNS = (
    (re.compile(r"((?:access_)?token=)[^&\s\"']+", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"(bearer[. ])[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
)
REDACTED_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "realtime")


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_redaction() -> None:
    """Attach the filter to the loggers that may see a handshake URL (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's default logging config, with the redaction filter on every handler."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG}
    config["filters"] = {"redact": {"()": "realtime.logs.RedactTokens"}}
    config["handlers"] = {
        name: {**handler, "filters": ["redact"]}
        for name, handler in LOGGING_CONFIG["handlers"].items()
    }
    config["loggers"] = {
        **LOGGING_CONFIG["loggers"],
        "realtime": {
            "handlers": ["default"],
            "level": level.upper(),
            "propagate": False,
        },
    }
    return config


def configure_logging(level: str) -> None:
    """Logging for the processes that are not uvicorn (worker, scheduler): the same
    format and filters, and taskiq's own messages at warning and above."""
    import logging.config

    config = log_config(level)
    config["loggers"]["taskiq"] = {"handlers": ["default"], "level": "WARNING"}
    logging.config.dictConfig(config)

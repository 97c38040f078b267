"""The one exception hierarchy of realtime, and the one table that maps it to the wire.

    RealtimeError                       root; never raised itself
    ├── RequestError                    answered with a status code; the socket stays open
    │   ├── ServerError         1 ERROR             (the message is generic, never the cause)
    │   ├── InvalidData         2 INVALID_DATA      details: [{"path", "reason"}]
    │   │   └── BodyTooLarge    2 INVALID_DATA      (HTTP 413) a REST body over the limit
    │   ├── PermissionDenied    3 PERMISSION_DENIED
    │   ├── NotFound            4 NOT_FOUND
    │   ├── RateLimited         5 RATE_LIMITED      details: {"retry_after"}
    │   ├── UnknownPackage      6 UNKNOWN_PACKAGE
    │   ├── HandlerTimeout      7 TIMEOUT
    │   │   └── OutcomeUnknown  7 TIMEOUT           a write sent, its answer lost: maybe done
    │   ├── Conflict            8 CONFLICT
    │   └── Unavailable         9 UNAVAILABLE       details: {"retry_after"}
    ├── CloseError                      ends the socket with a close code
    │   ├── NormalClosure       1000 (a stream that has ended)
    │   ├── GoingAway           1001 (drain finished)
    │   ├── AuthError           4401 (HTTP 401)
    │   ├── ForbiddenOrigin     4403 (HTTP 403)
    │   ├── BinaryFrame         1003
    │   ├── PolicyViolation     1008
    │   ├── FrameTooLarge       1009
    │   ├── SlowConsumer        1013
    │   └── SustainedRateLimit  4429
    └── ConfigError                     a bad setting or declaration; stops start-up

Every message of a RequestError or CloseError is safe to show to a client: it never
carries a stack trace, SQL text, a driver message or a token.
"""

from __future__ import annotations

from typing import Any

from realtime.protocol import CloseCode, Status


class RealtimeError(Exception):
    """Root of every error realtime raises on purpose."""


class RequestError(RealtimeError):
    """A request failed; the client gets `status` with `message` and `details`."""

    status: Status = Status.ERROR
    default_message = "internal error"

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(type(self)) or HTTP_STATUS[self.status]

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


class ServerError(RequestError):
    status = Status.ERROR
    default_message = "internal error"


class InvalidData(RequestError):
    status = Status.INVALID_DATA
    default_message = "invalid data"


class BodyTooLarge(InvalidData):
    """A REST request body over REALTIME_MAX_BODY_BYTES: refused before it is parsed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class PermissionDenied(RequestError):
    status = Status.PERMISSION_DENIED
    default_message = "permission denied"


class NotFound(RequestError):
    status = Status.NOT_FOUND
    default_message = "not found"


class _RetryLater(RequestError):
    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = max(1, round(retry_after + 0.4999))
        super().__init__(message, {"retry_after": self.retry_after})


class RateLimited(_RetryLater):
    status = Status.RATE_LIMITED
    default_message = "rate limit exceeded"


class UnknownPackage(RequestError):
    status = Status.UNKNOWN_PACKAGE
    default_message = "unknown package"


class HandlerTimeout(RequestError):
    status = Status.TIMEOUT
    default_message = "the handler ran past its deadline"


class OutcomeUnknown(HandlerTimeout):
    """A write was sent to the database and no answer came back in time (or the
    connection was lost): it may or may not have been applied. Never UNAVAILABLE, which
    promises "not done"."""

    default_message = "the database did not answer in time; the write may have been applied"

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        super().__init__(message, details if details is not None else {"outcome": "unknown"})


class Conflict(RequestError):
    status = Status.CONFLICT
    default_message = "conflict with the resource's state"


class Unavailable(_RetryLater):
    status = Status.UNAVAILABLE
    default_message = "a dependency is unavailable, retry later"


# The one table: the HTTP status of an error on the REST mount (PROTOCOL.md 4), by its
# status code, or by its class where a finer HTTP status tells a client more (a body
# too large is INVALID_DATA, answered 413).
HTTP_STATUS: dict[Status | type[RequestError], int] = {
    Status.OK: 200,
    Status.ERROR: 500,
    Status.INVALID_DATA: 422,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.RATE_LIMITED: 429,
    Status.UNKNOWN_PACKAGE: 404,
    Status.TIMEOUT: 504,
    Status.CONFLICT: 409,
    Status.UNAVAILABLE: 503,
    BodyTooLarge: 413,
}


class CloseError(RealtimeError):
    """Ends the socket with `code`; `reason` is short and safe to show."""

    code: CloseCode = CloseCode.INTERNAL_ERROR
    default_reason = "internal error"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = (reason or self.default_reason)[:120]
        super().__init__(self.reason)


class NormalClosure(CloseError):
    code = CloseCode.NORMAL
    default_reason = "done"


class GoingAway(CloseError):
    code = CloseCode.GOING_AWAY
    default_reason = "server draining"


class AuthError(CloseError):
    code = CloseCode.UNAUTHENTICATED
    default_reason = "unauthenticated"


class ForbiddenOrigin(CloseError):
    code = CloseCode.FORBIDDEN_ORIGIN
    default_reason = "origin not allowed"


class BinaryFrame(CloseError):
    code = CloseCode.UNSUPPORTED_DATA
    default_reason = "binary frames are not supported"


class PolicyViolation(CloseError):
    code = CloseCode.POLICY_VIOLATION
    default_reason = "too many invalid frames"


class FrameTooLarge(CloseError):
    code = CloseCode.MESSAGE_TOO_BIG
    default_reason = "frame too large"


class SlowConsumer(CloseError):
    code = CloseCode.TRY_AGAIN_LATER
    default_reason = "slow consumer"


class SustainedRateLimit(CloseError):
    code = CloseCode.RATE_LIMIT
    default_reason = "sustained rate-limit violation"


class ConfigError(RealtimeError):
    """A setting, permission entry or package declaration is wrong; start-up stops."""

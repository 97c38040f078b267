"""The one exception hierarchy of realtime, and the one table that maps it to the wire.

    class                          status             HTTP  close
    RealtimeError                  root; never raised itself
    ├── RequestError               ERROR              500   -     answered; the socket stays open
    │   ├── ServerError            ERROR              500   -     generic message, never the cause
    │   ├── InvalidData            INVALID_DATA       422   -     details: [{"path", "reason"}]
    │   │   └── BodyTooLarge       INVALID_DATA       413   -     a REST body over the limit
    │   ├── PermissionDenied       PERMISSION_DENIED  403   -
    │   ├── NotFound               NOT_FOUND          404   -     for this caller
    │   ├── UnknownPackage         UNKNOWN_PACKAGE    -     -     the socket's alone
    │   ├── HandlerTimeout         TIMEOUT            504   -
    │   │   └── OutcomeUnknown     TIMEOUT            504   -     sent, unanswered: maybe done
    │   ├── Conflict               CONFLICT           409   -
    │   └── RetryLater             (a base)                       details.retry_after, Retry-After
    │       ├── RateLimited        RATE_LIMITED       429   -
    │       └── Unavailable        UNAVAILABLE        503   -
    ├── CloseError                 -                  -     1011  ends the socket; internal error
    │   ├── NormalClosure          -                  -     1000  a stream that has ended
    │   ├── GoingAway              -                  -     1001  drain finished
    │   ├── BinaryFrame            -                  -     1003
    │   ├── PolicyViolation        -                  -     1008
    │   ├── FrameTooLarge          -                  -     1009
    │   ├── SlowConsumer           -                  -     1013
    │   ├── AuthError              PERMISSION_DENIED  401   4401  REST: WWW-Authenticate
    │   ├── ForbiddenOrigin        -                  -     4403  accepted, then closed
    │   ├── TooManySockets         -                  -     4409  the user's socket cap
    │   ├── Disconnected           -                  -     4410  by an administrator
    │   └── SustainedRateLimit     -                  -     4429
    └── ConfigError                a bad setting or declaration; stops start-up

`WIRE` below is that drawing as data, the only place a class meets its codes: an error's
`status`, `http_status`, close `code` and default message or reason are read from it
(`wire_of`), and so are the REST mount's answers and the OpenAPI document's error
responses. A subclass defined elsewhere (a handler's own `NotFound`) answers as its
nearest listed ancestor. tests/test_exceptions.py checks the drawing against the table,
the table against PROTOCOL.md, and one REST answer per row.

Every message of a RequestError or CloseError is safe to show to a client: it never
carries a stack trace, SQL text, a driver message or a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from realtime.protocol import CloseCode, Status

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Wire:
    """How one error class shows on the wire: a row of `WIRE`."""

    status: Status | None  # the answer's status_code; None: a close, never an answer
    http: int | None  # the REST mount's HTTP status; None: never answered over HTTP
    close: CloseCode | None  # the socket's close code; None: the socket stays open
    text: str  # the default message (an answer) or reason (a close)


class RealtimeError(Exception):
    """Root of every error realtime raises on purpose."""

    @property
    def status(self) -> Status:
        """The status_code a client is answered (ERROR where the table has none)."""
        status = wire_of(type(self)).status
        return _ERROR_STATUS if status is None else status

    @property
    def http_status(self) -> int:
        """The HTTP status on the REST mount. An error the table never answers over HTTP
        reaching it is a bug of ours: 500, as for any other."""
        http = wire_of(type(self)).http
        return _ERROR_HTTP if http is None else http


class RequestError(RealtimeError):
    """A request failed; the client gets `status` with `message` and `details`."""

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        self.message = message or wire_of(type(self)).text
        self.details = details
        super().__init__(self.message)

    def to_error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


class ServerError(RequestError):
    """Unexpected: the cause is logged server-side with the req_id, never shown."""


class InvalidData(RequestError):
    """Malformed JSON, a missing or ill-typed envelope field, or data failing its schema."""


class BodyTooLarge(InvalidData):
    """A REST request body over REALTIME_MAX_BODY_BYTES: refused before it is parsed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class PermissionDenied(RequestError):
    """The caller's roles do not allow this package, topic or resource."""


class NotFound(RequestError):
    """The resource does not exist for this caller (another tenant's row included)."""


class UnknownPackage(RequestError):
    """No package has this pkg_id (a socket's request; a REST route is a package)."""


class HandlerTimeout(RequestError):
    """The handler ran past its deadline."""


class OutcomeUnknown(HandlerTimeout):
    """A write was sent to the database and no answer came back in time (or the
    connection was lost): it may or may not have been applied. Never UNAVAILABLE, which
    promises "not done"."""

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        super().__init__(message, details if details is not None else {"outcome": "unknown"})


class Conflict(RequestError):
    """The request conflicts with the resource's state."""


class RetryLater(RequestError):
    """A base: answered with `details.retry_after` (whole seconds, at least 1), and over
    REST with the same number in `Retry-After`."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = max(1, round(retry_after + 0.4999))
        super().__init__(message, {"retry_after": self.retry_after})


class RateLimited(RetryLater):
    """Over the caller's rate limit (or its socket's in-flight cap)."""


class Unavailable(RetryLater):
    """A dependency (database, bus, identity provider) is down or timed out: not done."""


class CloseError(RealtimeError):
    """Ends the socket with `code`; `reason` is short and safe to show. Raised as itself,
    it is the 1011 close: a bug of ours, never the peer's fault."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = (reason or wire_of(type(self)).text)[:120]
        super().__init__(self.reason)

    @property
    def code(self) -> CloseCode:
        close = wire_of(type(self)).close
        return _ERROR_CLOSE if close is None else close

    def to_error(self) -> dict[str, Any]:
        """The error object of a REST answer (AuthError's 401)."""
        return {"message": self.reason}


class NormalClosure(CloseError):
    """A stream that has ended (a job's compatibility socket)."""


class GoingAway(CloseError):
    """The node drained: reconnect elsewhere."""


class BinaryFrame(CloseError):
    """A binary frame on an authenticated socket."""


class PolicyViolation(CloseError):
    """Too many unusable frames in a row, or a compatibility socket's refusal."""


class FrameTooLarge(CloseError):
    """A frame over REALTIME_MAX_FRAME_BYTES."""


class SlowConsumer(CloseError):
    """The client did not read fast enough and its outbound queue overflowed."""


class AuthError(CloseError):
    """No, an invalid or an expired token: 4401 on a socket, 401 over REST."""


class ForbiddenOrigin(CloseError):
    """A browser's Origin that configuration does not allow."""


class TooManySockets(CloseError):
    """The user already holds REALTIME_MAX_SOCKETS_PER_USER sockets (on any node): the
    newest is closed, the others stay."""


class Disconnected(CloseError):
    """An administrator closed every socket of the user (`sessions.disconnect`): the
    client must not come back with the same token."""


class SustainedRateLimit(CloseError):
    """A client that kept sending after it was told to wait."""


class ConfigError(RealtimeError):
    """A setting, permission entry or package declaration is wrong; start-up stops."""


# The one table (the drawing above, in its order): PROTOCOL.md 2.3 (status), 4 (HTTP)
# and 2.5 (close), and docs/protocol.md where it is finer (413, AuthError's body).
WIRE: dict[type[RealtimeError], Wire] = {
    RequestError: Wire(Status.ERROR, 500, None, "internal error"),
    ServerError: Wire(Status.ERROR, 500, None, "internal error"),
    InvalidData: Wire(Status.INVALID_DATA, 422, None, "invalid data"),
    BodyTooLarge: Wire(Status.INVALID_DATA, 413, None, "request body too large"),
    PermissionDenied: Wire(Status.PERMISSION_DENIED, 403, None, "permission denied"),
    NotFound: Wire(Status.NOT_FOUND, 404, None, "not found"),
    UnknownPackage: Wire(Status.UNKNOWN_PACKAGE, None, None, "unknown package"),
    HandlerTimeout: Wire(Status.TIMEOUT, 504, None, "the handler ran past its deadline"),
    OutcomeUnknown: Wire(
        Status.TIMEOUT,
        504,
        None,
        "the database did not answer in time; the write may have been applied",
    ),
    Conflict: Wire(Status.CONFLICT, 409, None, "conflict with the resource's state"),
    RateLimited: Wire(Status.RATE_LIMITED, 429, None, "rate limit exceeded"),
    Unavailable: Wire(Status.UNAVAILABLE, 503, None, "a dependency is unavailable, retry later"),
    CloseError: Wire(None, None, CloseCode.INTERNAL_ERROR, "internal error"),
    NormalClosure: Wire(None, None, CloseCode.NORMAL, "done"),
    GoingAway: Wire(None, None, CloseCode.GOING_AWAY, "server draining"),
    BinaryFrame: Wire(None, None, CloseCode.UNSUPPORTED_DATA, "binary frames are not supported"),
    PolicyViolation: Wire(None, None, CloseCode.POLICY_VIOLATION, "too many invalid frames"),
    FrameTooLarge: Wire(None, None, CloseCode.MESSAGE_TOO_BIG, "frame too large"),
    SlowConsumer: Wire(None, None, CloseCode.TRY_AGAIN_LATER, "slow consumer"),
    # REST answers it PERMISSION_DENIED in the body and 401 (PROTOCOL.md 4, docs/protocol.md)
    AuthError: Wire(Status.PERMISSION_DENIED, 401, CloseCode.UNAUTHENTICATED, "unauthenticated"),
    ForbiddenOrigin: Wire(None, None, CloseCode.FORBIDDEN_ORIGIN, "origin not allowed"),
    TooManySockets: Wire(None, None, CloseCode.TOO_MANY_SOCKETS, "too many sockets for this user"),
    Disconnected: Wire(None, None, CloseCode.DISCONNECTED, "disconnected by an administrator"),
    SustainedRateLimit: Wire(None, None, CloseCode.RATE_LIMIT, "sustained rate-limit violation"),
}
_UNLISTED = Wire(None, None, None, "internal error")  # ConfigError, RealtimeError itself


def _given(value: _T | None) -> _T:
    if value is None:
        raise ConfigError("realtime.exceptions.WIRE: a root row lacks a code")
    return value


# where an error is shown although its row has no such code (a bug of ours), it answers
# as the roots do: RequestError's ERROR and 500, CloseError's 1011
_ERROR_STATUS = _given(WIRE[RequestError].status)
_ERROR_HTTP = _given(WIRE[RequestError].http)
_ERROR_CLOSE = _given(WIRE[CloseError].close)


def wire_of(cls: type[RealtimeError]) -> Wire:
    """The row of `cls`, or of its nearest ancestor that has one."""
    wire = WIRE.get(cls)  # a listed class, nearly always: one lookup per read
    if wire is not None:
        return wire
    for ancestor in cls.__mro__:
        if ancestor in WIRE:
            return WIRE[ancestor]
    return _UNLISTED


def http_status_of(status: Status) -> int | None:
    """The HTTP status PROTOCOL.md 4 gives `status`: that of the first RequestError row
    with it (the most general class; a subclass may be finer, as BodyTooLarge's 413).
    None for UNKNOWN_PACKAGE, which only a socket answers."""
    for cls, wire in WIRE.items():
        if wire.status is status and issubclass(cls, RequestError):
            return wire.http
    return None


def rest_errors(body: bool) -> list[type[RealtimeError]]:
    """The errors a package route can answer, in the table's order: every row with an
    HTTP status but the RequestError base (ServerError stands for it), and BodyTooLarge
    only on a route that reads a body (`body`). OpenAPI documents them."""
    return [
        cls
        for cls, wire in WIRE.items()
        if wire.http is not None
        and cls is not RequestError
        and (body or not issubclass(cls, BodyTooLarge))
    ]

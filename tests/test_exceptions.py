"""The one table of realtime.exceptions: it covers the tree, its docstring draws it, it
agrees with PROTOCOL.md (2.3, 2.5, 4) and docs/protocol.md, OpenAPI derives its error
responses from it, and a REST call answers each row's HTTP status with its body."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from realtime import exceptions
from realtime.app import create_app
from realtime.exceptions import (
    WIRE,
    AuthError,
    BinaryFrame,
    BodyTooLarge,
    CloseError,
    ConfigError,
    Conflict,
    Disconnected,
    ForbiddenOrigin,
    FrameTooLarge,
    GoingAway,
    HandlerTimeout,
    InvalidData,
    NormalClosure,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    PolicyViolation,
    RateLimited,
    RealtimeError,
    RequestError,
    RetryLater,
    ServerError,
    SlowConsumer,
    SustainedRateLimit,
    TooManySockets,
    Unavailable,
    UnknownPackage,
    http_status_of,
    rest_errors,
    wire_of,
)
from realtime.packages import Context, Package, Rest
from realtime.protocol import Status
from realtime.types import JSONObject
from tests.conftest import APP_PACKAGES, HERE, make_settings
from tests.helpers import auth_header
from tests.packages import TEST_PACKAGES

BASES = {RetryLater}  # adds retry_after to its subclasses; never raised itself
BODY_LIMIT = 64


def subclasses(root: type[RealtimeError]) -> set[type[RealtimeError]]:
    found = {root}
    for sub in root.__subclasses__():
        found |= subclasses(sub)
    return {cls for cls in found if cls.__module__ == exceptions.__name__}


def test_the_table_covers_every_error_class_of_the_tree() -> None:
    listed = (subclasses(RequestError) | subclasses(CloseError)) - BASES
    assert set(WIRE) == listed
    for cls, wire in WIRE.items():
        if issubclass(cls, RequestError):
            assert wire.status is not None and wire.close is None, cls
        else:
            assert wire.close is not None, cls
        assert wire.text, cls


def test_statuses_are_protocol_md_2_3() -> None:
    statuses = {cls: wire.status for cls, wire in WIRE.items() if issubclass(cls, RequestError)}
    assert statuses == {
        RequestError: Status.ERROR,
        ServerError: Status.ERROR,
        InvalidData: Status.INVALID_DATA,
        BodyTooLarge: Status.INVALID_DATA,
        PermissionDenied: Status.PERMISSION_DENIED,
        NotFound: Status.NOT_FOUND,
        UnknownPackage: Status.UNKNOWN_PACKAGE,
        HandlerTimeout: Status.TIMEOUT,
        OutcomeUnknown: Status.TIMEOUT,
        Conflict: Status.CONFLICT,
        RateLimited: Status.RATE_LIMITED,
        Unavailable: Status.UNAVAILABLE,
    }
    assert ServerError().status is Status.ERROR and Unavailable(1).status is Status.UNAVAILABLE


def test_http_statuses_are_protocol_md_4() -> None:
    assert {status: http_status_of(status) for status in Status if status is not Status.OK} == {
        Status.ERROR: 500,
        Status.INVALID_DATA: 422,
        Status.PERMISSION_DENIED: 403,
        Status.NOT_FOUND: 404,
        Status.RATE_LIMITED: 429,
        Status.UNKNOWN_PACKAGE: None,  # a socket's answer only: every REST route is a package
        Status.TIMEOUT: 504,
        Status.CONFLICT: 409,
        Status.UNAVAILABLE: 503,
    }
    # finer than the status, as docs/protocol.md (REST) says
    assert wire_of(BodyTooLarge).http == 413 and BodyTooLarge(1).http_status == 413
    assert wire_of(AuthError).http == 401 and AuthError().http_status == 401
    assert AuthError().status is Status.PERMISSION_DENIED  # the 401 body's status_code: 3


def test_close_codes_are_protocol_md_2_5() -> None:
    codes = {cls: int(wire.close) for cls, wire in WIRE.items() if wire.close is not None}
    assert codes == {
        CloseError: 1011,
        NormalClosure: 1000,
        GoingAway: 1001,
        BinaryFrame: 1003,
        PolicyViolation: 1008,
        FrameTooLarge: 1009,
        SlowConsumer: 1013,
        AuthError: 4401,
        ForbiddenOrigin: 4403,
        TooManySockets: 4409,
        Disconnected: 4410,
        SustainedRateLimit: 4429,
    }
    assert SlowConsumer().code == 1013 and CloseError().code == 1011
    assert (CloseError().reason, SlowConsumer().reason) == ("internal error", "slow consumer")


def test_a_class_defined_elsewhere_answers_as_its_nearest_listed_ancestor() -> None:
    class Gone(NotFound):
        pass

    assert (Gone().status, Gone().http_status, Gone().message) == (
        Status.NOT_FOUND,
        404,
        "not found",
    )
    # never shown on purpose; if it were, it answers as the roots do
    assert (ConfigError("x").status, ConfigError("x").http_status) == (Status.ERROR, 500)
    assert UnknownPackage().http_status == 500  # over HTTP it would be a bug of ours


def drawing() -> list[tuple[str, list[str]]]:
    """The module docstring's tree: (class name, [status, HTTP, close]) per line."""
    assert exceptions.__doc__ is not None
    lines = [line for line in exceptions.__doc__.splitlines() if line.startswith("    ")]
    rows = [line.strip().lstrip("│├└─ ").split() for line in lines[1:]]  # [0]: the heading
    return [(row[0], row[1:4]) for row in rows]


def test_the_docstring_draws_the_table_in_its_order() -> None:
    drawn = dict(drawing())
    every = subclasses(RealtimeError) | {RealtimeError}
    assert set(drawn) == {cls.__name__ for cls in every}
    assert [name for name, _ in drawing() if name in {c.__name__ for c in WIRE}] == [
        cls.__name__ for cls in WIRE
    ]
    for cls, wire in WIRE.items():
        expected = [
            wire.status.name if wire.status is not None else "-",
            str(wire.http) if wire.http is not None else "-",
            str(int(wire.close)) if wire.close is not None else "-",
        ]
        assert drawn[cls.__name__] == expected, cls


# -- the REST mount: one call per row with an HTTP status ------------------------------


async def raise_named(ctx: Context, data: JSONObject) -> Any:
    raise sample(getattr(exceptions, data["name"]))


def sample(cls: type[RealtimeError]) -> RealtimeError:
    if issubclass(cls, RetryLater):
        return cls(3)
    if issubclass(cls, BodyTooLarge):
        return cls(BODY_LIMIT)
    return cls()


RAISE = Package(
    990,
    "test.raise",
    raise_named,
    rest=Rest("POST", "/test/raise/{name}"),
    schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
)


@pytest.fixture
def raising(tmp_path: Path) -> Iterator[TestClient]:
    """The tests' app plus `test.raise`, with REST bodies limited to BODY_LIMIT bytes."""
    permissions = (HERE / "permissions.toml").read_text()
    permissions = permissions.replace("[packages]\n", '[packages]\n"test.raise" = ["user"]\n', 1)
    (tmp_path / "permissions.toml").write_text(permissions)
    settings = make_settings(
        tmp_path, permissions_file=str(tmp_path / "permissions.toml"), max_body_bytes=BODY_LIMIT
    )
    app = create_app(settings, [*APP_PACKAGES, *TEST_PACKAGES, RAISE])
    with TestClient(app) as client:
        yield client


# the error object each row answers with (docs/protocol.md), written out here
ERRORS: dict[type[RealtimeError], JSONObject] = {
    RequestError: {"message": "internal error"},
    ServerError: {"message": "internal error"},
    InvalidData: {"message": "invalid data"},
    BodyTooLarge: {"message": f"request body larger than {BODY_LIMIT} bytes"},
    PermissionDenied: {"message": "permission denied"},
    NotFound: {"message": "not found"},
    HandlerTimeout: {"message": "the handler ran past its deadline"},
    OutcomeUnknown: {
        "message": "the database did not answer in time; the write may have been applied",
        "details": {"outcome": "unknown"},
    },
    Conflict: {"message": "conflict with the resource's state"},
    RateLimited: {"message": "rate limit exceeded", "details": {"retry_after": 3}},
    Unavailable: {
        "message": "a dependency is unavailable, retry later",
        "details": {"retry_after": 3},
    },
    AuthError: {"message": "missing bearer token"},
}
HEADERS: dict[type[RealtimeError], dict[str, str]] = {
    BodyTooLarge: {"connection": "close"},
    RateLimited: {"retry-after": "3"},
    Unavailable: {"retry-after": "3"},
    AuthError: {"www-authenticate": 'Bearer error="invalid_token"'},
}


def test_every_row_with_an_http_status_has_a_rest_case() -> None:
    assert set(ERRORS) == {cls for cls, wire in WIRE.items() if wire.http is not None}


@pytest.mark.parametrize("cls", list(ERRORS), ids=lambda cls: cls.__name__)
def test_a_rest_call_answers_the_tables_http_status_and_body(
    raising: TestClient, issuer_token: str, cls: type[RealtimeError]
) -> None:
    path = f"/test/raise/{cls.__name__}"
    if cls is AuthError:  # the real path: no token
        response = raising.post(path, json={})
    elif cls is BodyTooLarge:  # the real path: a body over the limit
        response = raising.post(
            path, content=b" " * (BODY_LIMIT + 1), headers=auth_header(issuer_token)
        )
    else:  # the handler raises it
        response = raising.post(path, json={}, headers=auth_header(issuer_token))
    wire = wire_of(cls)
    assert wire.status is not None
    assert response.status_code == wire.http
    assert response.json() == {"status_code": int(wire.status), "error": ERRORS[cls]}
    assert response.headers["content-type"] == "application/json"
    for name, value in HEADERS.get(cls, {}).items():
        assert response.headers[name] == value
    if cls not in {RateLimited, Unavailable}:
        assert "retry-after" not in response.headers


def test_login_answers_through_the_same_table(raising: TestClient) -> None:
    wrong = raising.post("/auth/login", json={"username": "alice", "password": "bob"})
    assert wrong.status_code == wire_of(AuthError).http == 401
    assert wrong.json() == {"status_code": 3, "error": {"message": "invalid credentials"}}
    assert wrong.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    malformed = raising.post("/auth/login", json={"username": 1})
    assert malformed.status_code == wire_of(InvalidData).http == 422
    assert malformed.json()["status_code"] == 2
    large = raising.post("/auth/login", content=b" " * (BODY_LIMIT + 1))
    assert large.status_code == wire_of(BodyTooLarge).http == 413


# -- OpenAPI -------------------------------------------------------------------------

ANY_ROUTE = {"401", "403", "404", "409", "422", "429", "500", "503", "504"}


def test_openapi_error_responses_are_the_tables(raising: TestClient) -> None:
    spec = raising.get("/openapi.json").json()
    operations = spec["paths"]
    # written out: what PROTOCOL.md 4 and docs/protocol.md (REST) list
    assert set(operations["/projects"]["post"]["responses"]) == {"201", "413", *ANY_ROUTE}
    assert set(operations["/projects"]["get"]["responses"]) == {"200", *ANY_ROUTE}
    assert set(operations["/auth/login"]["post"]["responses"]) == {
        "200",
        "401",
        "413",
        "422",
        "503",
    }
    # derived: every package operation lists exactly the table's HTTP statuses
    for item in operations.values():
        for method, operation in item.items():
            if "x-pkg-id" not in operation:
                continue
            body = method.upper() in {"POST", "PUT", "PATCH"}
            errors = {str(wire_of(cls).http) for cls in rest_errors(body)}
            assert set(operation["responses"]) - {"200", "201", "202"} == errors, method
    raise_op = operations["/test/raise/{name}"]["post"]["responses"]
    assert raise_op["503"]["description"] == (
        "UNAVAILABLE: a dependency is unavailable, retry later (see Retry-After)"
    )
    assert raise_op["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }

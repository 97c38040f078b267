"""The REST mount (PROTOCOL.md 4): the same packages over HTTP, through the same router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import Route

from realtime import jsonparse
from realtime.auth.principal import Principal
from realtime.dispatch import not_json
from realtime.exceptions import (
    AuthError,
    BodyTooLarge,
    InvalidData,
    PermissionDenied,
    RequestError,
    RetryLater,
)
from realtime.packages import Catalog, Context, Package
from realtime.permissions import allows
from realtime.protocol import encode_rest_error
from realtime.types import JSONObject

if TYPE_CHECKING:  # the composition root, for types only: importing it loads it all
    from realtime.lifespan import Services

Endpoint = Callable[[Request], Awaitable[Response]]
BODY_METHODS = {"POST", "PUT", "PATCH"}


def services_of(connection: HTTPConnection) -> Services:
    return cast("Services", connection.app.state.services)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(error: RequestError | AuthError) -> Response:
    """The one REST error answer: the HTTP status and `status_code` of the error's row in
    realtime.exceptions' table, and the headers its kind calls for."""
    headers = {}
    if isinstance(error, AuthError):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    if isinstance(error, RetryLater):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, BodyTooLarge):
        # the rest of the body was never read: this connection cannot carry another request
        headers["Connection"] = "close"
    body = encode_rest_error(error.status, error.to_error())
    return Response(body, error.http_status, headers, media_type="application/json")


async def authenticate(request: Request) -> Principal:
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() != "bearer ":
        raise AuthError("missing bearer token")
    return await services_of(request).verifier.verify(authorization[7:].strip())


def package_routes(catalog: Catalog) -> list[Route]:
    """One route per path, so a 405 answers the full Allow header of that path."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for package in catalog:
        if package.rest is not None:
            methods = by_path.setdefault(package.rest.path, {})
            methods[package.rest.method] = _endpoint(package)
    return [
        Route(path, _dispatch(methods), methods=list(methods)) for path, methods in by_path.items()
    ]


def _dispatch(methods: dict[str, Endpoint]) -> Endpoint:
    if "GET" in methods:
        methods = {**methods, "HEAD": methods["GET"]}

    async def endpoint(request: Request) -> Response:
        return await methods[request.method](request)

    return endpoint


def _endpoint(package: Package) -> Endpoint:
    assert package.rest is not None
    status = package.rest.status

    async def endpoint(request: Request) -> Response:
        services = services_of(request)
        try:
            principal = await authenticate(request)
            data = await request_data(request, package)
            ctx = Context(principal, package, services)
            result, meta = await services.dispatcher.call(ctx, data, "rest")
        except (AuthError, RequestError) as error:
            return error_response(error)
        try:
            return json_response(result if meta is None else {"data": result, "meta": meta}, status)
        except TypeError:  # orjson.JSONEncodeError: the handler returned something not JSON
            return error_response(not_json(package, None))

    return endpoint


async def request_data(request: Request, package: Package) -> JSONObject:
    """Body, then query, then path parameters (the path wins), typed by the schema."""
    limit = services_of(request).settings.max_body_bytes
    data: JSONObject = await json_body(request, limit) if request.method in BODY_METHODS else {}
    properties = package.request_schema().get("properties", {})
    for name, value in [*request.query_params.items(), *request.path_params.items()]:
        data[name] = _coerce(value, properties.get(name, {}))
    return data


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read as it arrives, never more than `limit` bytes of it: BodyTooLarge as
    soon as it passes the limit, and before reading anything when Content-Length does."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


async def json_body(request: Request, limit: int) -> JSONObject:
    """The body as a JSON object (an empty body is `{}`); InvalidData otherwise."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = jsonparse.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidData("request body is not valid JSON") from None
    except jsonparse.JSONRefused as refused:
        raise InvalidData(f"request body: {refused.reason}") from None
    if not isinstance(body, dict):
        raise InvalidData("request body must be a JSON object")
    return body


def _coerce(value: Any, spec: JSONObject) -> Any:
    """Query and path values are strings; give them the type the schema asks for."""
    kind = spec.get("type")
    if not isinstance(value, str):
        return value
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value  # the validator reports it with its path
    if kind == "boolean" and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return value


PrincipalEndpoint = Callable[[Request, Principal], Awaitable[Response]]


class RestOnlyRoute(Route):
    """A REST-only route (not a package): authenticated, and allowed by the roles of its
    `"METHOD /path"` entry in permissions.toml's [routes] table (default deny)."""

    def __init__(self, method: str, path: str, endpoint: PrincipalEndpoint) -> None:
        self.permission_key = f"{method} {path}"
        super().__init__(path, self._guard(endpoint), methods=[method])

    def _guard(self, endpoint: PrincipalEndpoint) -> Endpoint:
        key = self.permission_key

        async def guarded(request: Request) -> Response:
            try:
                principal = await authenticate(request)
            except AuthError as error:
                return error_response(error)
            roles = services_of(request).dispatcher.route_roles.get(key, frozenset())
            if not allows(roles, principal.roles):
                return error_response(PermissionDenied(f"your roles do not allow {key}"))
            return await endpoint(request, principal)

        return guarded

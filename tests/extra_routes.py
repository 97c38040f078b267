"""A handler module with a REST-only route, loaded by the tests' settings."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from realtime.auth.principal import Principal
from realtime.rest import RestOnlyRoute


async def report(request: Request, principal: Principal) -> Response:
    return JSONResponse({"report": "ok", "for": principal.sub})


async def nobody(request: Request, principal: Principal) -> Response:
    return JSONResponse({"never": True})


ROUTES = [
    RestOnlyRoute("GET", "/test/report", report),
    RestOnlyRoute("GET", "/test/unlisted", nobody),
]

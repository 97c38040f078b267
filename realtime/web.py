"""The browser's door: the JavaScript client and the demo page, Swagger UI's assets (served
from the swagger-ui-bundle package, so `/docs` works offline), and CORS for the REST mount.

Files are served from fixed tables, never from a path the request names, so nothing
outside them can be reached.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from realtime.exceptions import NotFound
from realtime.rest import error_response

STATIC = Path(__file__).parent / "static"
SWAGGER = Path(str(swagger_ui_bundle.swagger_ui_path))

# name in the URL -> media type; the client and its declarations are what apps import
CLIENT_FILES = {
    "realtime.js": "text/javascript; charset=utf-8",
    "realtime.d.ts": "application/typescript; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}
SWAGGER_FILES = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}
# the browser may cache for a minute; a deploy changes the files at most that late
CACHE = {"Cache-Control": "public, max-age=60"}


def routes() -> list[BaseRoute]:
    return [
        Route("/", demo_page),
        Route("/client/{name}", client_file),
        Route("/docs/assets/{name}", swagger_file),
    ]


def cors(allowed_origins: tuple[str, ...] | None) -> list[Middleware]:
    """CORS for REST callers on other origins, from the same ALLOWED_ORIGINS as the socket.
    Unset: no CORS headers at all, so only same-origin pages may call. Tokens ride in the
    Authorization header, never in cookies, so credentials are not allowed."""
    if not allowed_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(allowed_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    ]


async def demo_page(request: Request) -> Response:
    return FileResponse(STATIC / "demo.html", media_type="text/html; charset=utf-8")


async def client_file(request: Request) -> Response:
    return _file(STATIC, CLIENT_FILES, request.path_params["name"])


async def swagger_file(request: Request) -> Response:
    return _file(SWAGGER, SWAGGER_FILES, request.path_params["name"])


def _file(folder: Path, table: dict[str, str], name: str) -> Response:
    media_type = table.get(name)
    if media_type is None:
        return error_response(NotFound(f"no file {name!r}"))
    return FileResponse(folder / name, media_type=media_type, headers=CACHE)

"""Issue 11, item 1: REST bodies are read incrementally up to REALTIME_MAX_BODY_BYTES and
answered 413 above it, before parsing; a Content-Length over the limit is answered at
once, unread. Before, `POST /auth/login` (no token needed) read any body whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import build_app, make_settings, serve
from tests.hostile.raw import chunk, http_request, json_of

LIMIT = 1024
TOO_LARGE = {"status_code": 2, "error": {"message": f"request body larger than {LIMIT} bytes"}}
DEFAULT_TOO_LARGE = {
    "status_code": 2,
    "error": {"message": "request body larger than 1048576 bytes"},
}
LOGIN = b'{"username": "alice", "password": "alice"}'


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[str]:
    with serve(build_app(make_settings(tmp_path, max_body_bytes=LIMIT))) as address:
        yield address


def controls(address: str, token: str) -> None:
    """The same server still answers ordinary requests on both doors that read bodies."""
    with httpx.Client(base_url=f"http://{address}", timeout=10) as http:
        login = http.post("/auth/login", content=LOGIN)
        assert login.status_code == 200 and login.json()["token_type"] == "Bearer"
        created = http.post(
            "/projects", json={"name": "control"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201 and created.json()["name"] == "control"


@pytest.mark.parametrize(
    ("method", "path", "with_token"),
    [("POST", "/auth/login", False), ("POST", "/projects", True), ("PATCH", "/projects/1", True)],
)
def test_a_declared_body_over_the_default_limit_is_413_before_any_byte_is_read(
    server: str, token: str, method: str, path: str, with_token: bool
) -> None:
    """Only the head is sent, declaring 256 MB: the answer comes without the body (the
    old server waited for all of it)."""
    headers = {"Content-Type": "application/json", "Content-Length": str(256 * 1024 * 1024)}
    if with_token:
        headers["Authorization"] = f"Bearer {token}"
    status, fields, body = http_request(server, method, path, headers)
    assert status == 413
    assert json_of(body) == DEFAULT_TOO_LARGE
    assert fields["connection"] == "close"  # the unread rest cannot be taken for a request
    controls(server, token)


def test_a_streamed_body_is_refused_once_it_passes_the_limit(small_server: str, token: str) -> None:
    """Chunked, no Content-Length: three 512-byte chunks and never the end of the body.
    The server answers as soon as it has read more than the limit."""
    parts = [chunk(b" " * 512) for _ in range(3)]
    for path, extra in [("/auth/login", {}), ("/projects", {"Authorization": f"Bearer {token}"})]:
        headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/json", **extra}
        status, _, body = http_request(small_server, "POST", path, headers, parts)
        assert (status, json_of(body)) == (413, TOO_LARGE)
    controls(small_server, token)


def test_a_body_of_exactly_the_limit_is_served_and_one_byte_more_is_not(
    small_server: str, token: str
) -> None:
    at_limit = LOGIN + b" " * (LIMIT - len(LOGIN))
    with httpx.Client(base_url=f"http://{small_server}", timeout=10) as http:
        assert http.post("/auth/login", content=at_limit).status_code == 200
        over = http.post("/auth/login", content=at_limit + b" ")
        assert (over.status_code, over.json()) == (413, TOO_LARGE)
        bearer = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        name = b'{"name": "at the limit"}'
        project = name + b" " * (LIMIT - len(name))
        assert http.post("/projects", content=project, headers=bearer).status_code == 201
        over = http.post("/projects", content=project + b" ", headers=bearer)
        assert (over.status_code, over.json()) == (413, TOO_LARGE)
    controls(small_server, token)


def test_a_body_is_not_read_before_the_token_is_checked(small_server: str) -> None:
    """A REST route answers a missing token with 401 without reading the body at all."""
    headers = {"Content-Type": "application/json", "Content-Length": str(10 * LIMIT)}
    status, _, body = http_request(small_server, "POST", "/projects", headers)
    assert status == 401
    assert json_of(body) == {"status_code": 3, "error": {"message": "missing bearer token"}}

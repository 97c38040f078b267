"""PROTOCOL.md 4: the REST mount over the same packages, and the public endpoints."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tests.conftest import build_app, make_settings
from tests.helpers import auth_header


def test_me_over_rest(client: TestClient, token: str) -> None:
    response = client.get("/me", headers=auth_header(token))
    assert response.status_code == 200
    assert response.json()["sub"] == "alice" and response.json()["tenant_id"] == "acme"


def test_missing_or_invalid_token_is_401(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer garbage"}, {"Authorization": "Basic eA=="}):
        response = client.get("/me", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["status_code"] == 3


def test_status_mapping(client: TestClient, token: str, admin_token: str) -> None:
    headers = auth_header(token)
    assert client.get("/test/boom", headers=headers).status_code == 500
    assert client.get("/test/boom", headers=headers).json() == {
        "status_code": 1,
        "error": {"message": "internal error"},
    }
    assert client.get("/test/missing", headers=headers).status_code == 404
    assert client.post("/test/conflict", headers=headers).status_code == 409
    unavailable = client.get("/test/unavailable", headers=headers)
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "3"
    assert client.get("/test/admin", headers=headers).status_code == 403
    assert client.get("/test/admin", headers=auth_header(admin_token)).json() == {"ok": True}


def test_timeout_is_504(tmp_path: Path, issuer_token: str) -> None:
    with TestClient(build_app(make_settings(tmp_path, handler_timeout=0.1))) as client:
        response = client.get("/test/sleep?seconds=2", headers=auth_header(issuer_token))
    assert response.status_code == 504 and response.json()["status_code"] == 7


def test_rate_limited_is_429_with_retry_after(tmp_path: Path, issuer_token: str) -> None:
    settings = make_settings(tmp_path, rate_limit=0.5, rate_burst=2)
    with TestClient(build_app(settings)) as client:
        codes = [client.get("/me", headers=auth_header(issuer_token)).status_code for _ in range(3)]
        limited = client.get("/me", headers=auth_header(issuer_token))
    assert codes == [200, 200, 429]
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["details"]["retry_after"] == int(limited.headers["retry-after"])


def test_create_merges_path_query_and_body_with_types(client: TestClient, token: str) -> None:
    response = client.post(
        "/test/things/7?flag=true", json={"name": "box"}, headers=auth_header(token)
    )
    assert response.status_code == 201
    assert response.json() == {"id": 7, "name": "box", "flag": True}


def test_invalid_data_is_422_with_details(client: TestClient, token: str) -> None:
    headers = auth_header(token)
    too_long = client.post("/test/things/7", json={"name": "x" * 11}, headers=headers)
    assert too_long.status_code == 422
    assert too_long.json()["error"]["details"][0]["path"] == "/name"
    bad_path = client.post("/test/things/abc", json={"name": "a"}, headers=headers)
    assert bad_path.status_code == 422
    assert bad_path.json()["error"]["details"][0]["path"] == "/id"
    not_json = client.post("/test/things/7", content=b"{name:", headers=headers)
    assert not_json.status_code == 422
    assert not_json.json()["error"]["message"] == "request body is not valid JSON"
    not_object = client.post("/test/things/7", json=[1], headers=headers)
    assert not_object.status_code == 422


def test_pagination_meta_and_bounds(client: TestClient, token: str) -> None:
    headers = auth_header(token)
    first = client.get("/test/numbers?total=45", headers=headers).json()
    assert first["meta"] == {"page": 1, "per_page": 20, "total": 45, "pages": 3}
    assert first["data"] == list(range(20))
    last = client.get("/test/numbers?total=45&page=3", headers=headers).json()
    assert last["data"] == list(range(40, 45))
    beyond = client.get("/test/numbers?total=45&page=9&per_page=10", headers=headers).json()
    assert beyond == {"data": [], "meta": {"page": 9, "per_page": 10, "total": 45, "pages": 5}}
    empty = client.get("/test/numbers?total=0", headers=headers).json()
    assert empty["meta"] == {"page": 1, "per_page": 20, "total": 0, "pages": 0}
    assert client.get("/test/numbers?total=1&per_page=101", headers=headers).status_code == 422
    assert client.get("/test/numbers?total=1&page=0", headers=headers).status_code == 422


def test_public_endpoints(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    catalog = {p["name"]: p for p in client.get("/packages").json()}
    assert catalog["echo"]["pkg_id"] == 40 and catalog["echo"]["roles"] == ["user"]
    assert catalog["me"]["rest"] == {"method": "GET", "path": "/me"}
    assert catalog["auth.refresh"]["roles"] == ["*"]
    assert catalog["test.nobody"]["roles"] == []
    numbers = catalog["test.numbers"]
    assert numbers["paginated"] is True
    assert numbers["request_schema"]["properties"]["per_page"]["maximum"] == 100


def test_metrics_count_calls_by_package_status_and_transport(
    client: TestClient, token: str
) -> None:
    client.get("/me", headers=auth_header(token))
    client.get("/test/missing", headers=auth_header(token))
    text = client.get("/metrics").text
    assert 'realtime_requests_total{package="me",status="OK",transport="rest"} 1.0' in text
    assert (
        'realtime_requests_total{package="test.missing",status="NOT_FOUND",transport="rest"} 1.0'
        in text
    )
    assert token not in text


def test_rest_only_routes_follow_their_permissions_entry(
    client: TestClient, token: str, admin_token: str
) -> None:
    assert client.get("/test/report").status_code == 401
    denied = client.get("/test/report", headers=auth_header(token))
    assert denied.status_code == 403 and denied.json()["status_code"] == 3
    allowed = client.get("/test/report", headers=auth_header(admin_token))
    assert allowed.json() == {"report": "ok", "for": "root"}
    # a REST-only route without an entry is denied to everyone (default deny)
    assert client.get("/test/unlisted", headers=auth_header(admin_token)).status_code == 403

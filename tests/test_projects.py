"""Projects and authors over both doors, on SQLite and on PostgreSQL (fixture `engine`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from starlette.testclient import TestClient, WebSocketTestSession

from realtime.auth.dev import DevIssuer
from tests.helpers import auth_header, call

CREATE, LIST, GET, UPDATE, DELETE = 10, 11, 12, 13, 14
AUTHORS_LIST, AUTHORS_PAGE, AUTHORS_CREATE = 1, 2, 3


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "carl": issuer.mint("carl", ["user"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "root": issuer.mint("root", ["user", "admin"], tenant="globex"),
    }


def ok(answer: dict[str, Any]) -> Any:
    assert answer["status_code"] == 0, answer
    return answer["data"]


def stamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, text
    return parsed


def test_crud_over_the_socket(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        created = ok(call(ws, CREATE, {"name": "Apollo", "description": "to the moon"}))
        assert created["name"] == "Apollo" and created["description"] == "to the moon"
        assert created["is_deleted"] is False and created["deleted_at"] is None
        assert stamp(created["created_at"]) == stamp(created["updated_at"])
        assert ok(call(ws, GET, {"id": created["id"]})) == created
        updated = ok(call(ws, UPDATE, {"id": created["id"], "description": None}))
        assert updated["name"] == "Apollo" and updated["description"] is None
        assert stamp(updated["updated_at"]) >= stamp(created["updated_at"])
        listed = call(ws, LIST, {})
        assert listed["data"] == [updated]
        assert listed["meta"] == {"page": 1, "per_page": 20, "total": 1, "pages": 1}
        deleted = ok(call(ws, DELETE, {"id": created["id"]}))
        assert deleted["id"] == created["id"] and stamp(deleted["deleted_at"])
        assert call(ws, GET, {"id": created["id"]})["status_code"] == 4
        assert call(ws, UPDATE, {"id": created["id"], "name": "x"})["status_code"] == 4
        assert ok(call(ws, LIST, {})) == []


def test_crud_over_rest(db_client: TestClient, tokens: dict[str, str]) -> None:
    headers = auth_header(tokens["alice"])
    created = db_client.post("/projects", json={"name": "Gemini"}, headers=headers)
    assert created.status_code == 201
    project = created.json()
    assert project["description"] is None
    path = f"/projects/{project['id']}"
    assert db_client.get(path, headers=headers).json() == project
    patched = db_client.patch(path, json={"name": "Gemini 2"}, headers=headers)
    assert patched.status_code == 200 and patched.json()["name"] == "Gemini 2"
    page = db_client.get("/projects", headers=headers).json()
    assert page == {
        "data": [patched.json()],
        "meta": {"page": 1, "per_page": 20, "total": 1, "pages": 1},
    }
    first = db_client.delete(path, headers=headers)
    second = db_client.delete(path, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()  # idempotent: the same deleted_at
    assert db_client.get(path, headers=headers).status_code == 404
    with_deleted = db_client.get("/projects?include_deleted=true", headers=headers).json()
    assert with_deleted["data"][0]["is_deleted"] is True
    assert with_deleted["data"][0]["deleted_at"] == first.json()["deleted_at"]
    assert db_client.get("/projects", headers=headers).json()["meta"]["total"] == 0


def test_another_tenant_sees_not_found_on_every_operation(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    mine = db_client.post(
        "/projects", json={"name": "secret"}, headers=auth_header(tokens["alice"])
    ).json()
    for intruder in ("bob", "root"):  # root is an admin, of another tenant
        headers = auth_header(tokens[intruder])
        path = f"/projects/{mine['id']}"
        assert db_client.get(path, headers=headers).status_code == 404
        assert db_client.patch(path, json={"name": "mine"}, headers=headers).status_code == 404
        assert db_client.delete(path, headers=headers).status_code == 404
        listed = db_client.get("/projects?include_deleted=true", headers=headers).json()
        assert listed["meta"]["total"] == 0
        with db_client.websocket_connect("/ws", headers=headers) as ws:
            for pkg_id, data in [
                (GET, {"id": mine["id"]}),
                (DELETE, {"id": mine["id"]}),
                (UPDATE, {"id": mine["id"], "name": "mine"}),
            ]:
                answer = call(ws, pkg_id, data)
                assert answer["status_code"] == 4
                assert answer["error"]["message"] == "project not found"
            assert ok(call(ws, LIST, {"include_deleted": True})) == []
    # the same tenant (another user) does see it; the row was not touched
    same_tenant = db_client.get(f"/projects/{mine['id']}", headers=auth_header(tokens["carl"]))
    assert same_tenant.json() == mine


def test_pagination_edges_and_stable_order(db_client: TestClient, tokens: dict[str, str]) -> None:
    headers = auth_header(tokens["alice"])
    with db_client.websocket_connect("/ws", headers=headers) as ws:
        assert call(ws, LIST, {}) == {
            "pkg_id": LIST,
            "req_id": "r1",
            "status_code": 0,
            "data": [],
            "meta": {"page": 1, "per_page": 20, "total": 0, "pages": 0},
        }
        ids = [ok(call(ws, CREATE, {"name": f"p{i:02}"}))["id"] for i in range(45)]
        pages = [call(ws, LIST, {"page": n, "per_page": 20}) for n in (1, 2, 3, 4)]
        assert [p["meta"] for p in pages] == [
            {"page": n, "per_page": 20, "total": 45, "pages": 3} for n in (1, 2, 3, 4)
        ]
        seen = [project["id"] for p in pages for project in p["data"]]
        assert seen == sorted(ids, reverse=True)  # newest first, no gap, no duplicate
        assert len(pages[2]["data"]) == 5 and pages[3]["data"] == []
        oldest = ok(call(ws, LIST, {"order": "oldest", "per_page": 3}))
        assert [p["id"] for p in oldest] == ids[:3]
        too_many = call(ws, LIST, {"per_page": 101})
        assert too_many["status_code"] == 2
        assert too_many["error"]["details"][0]["path"] == "/per_page"
    assert db_client.get("/projects?per_page=101", headers=headers).status_code == 422
    assert db_client.get("/projects?page=0", headers=headers).status_code == 422


def test_search_matches_names_literally(db_client: TestClient, tokens: dict[str, str]) -> None:
    headers = auth_header(tokens["alice"])
    for name in ("Alpha 100%", "alphabet", "beta_1", "betaX1", "Gamma"):
        db_client.post("/projects", json={"name": name}, headers=headers)

    def names(search: str) -> list[str]:
        page = db_client.get(
            "/projects", params={"search": search, "order": "oldest"}, headers=headers
        )
        return [p["name"] for p in page.json()["data"]]

    assert names("ALPHA") == ["Alpha 100%", "alphabet"]
    assert names("100%") == ["Alpha 100%"]
    assert names("a_1") == ["beta_1"]  # "_" is not a wildcard
    assert names("zzz") == []


def test_validation_details(db_client: TestClient, tokens: dict[str, str]) -> None:
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["alice"])) as ws:
        answer = call(ws, CREATE, {"name": "", "description": "d" * 2001, "owner": "me"})
        assert answer["status_code"] == 2
        paths = sorted(d["path"] for d in answer["error"]["details"])
        assert paths == ["/", "/description", "/name"]
        assert call(ws, CREATE, {"name": "n" * 201})["status_code"] == 2
        assert call(ws, CREATE, {"name": "nul\u0000byte"})["status_code"] == 2
        assert call(ws, UPDATE, {"id": 10**6})["status_code"] == 4  # nothing to change, no row
        assert call(ws, GET, {"id": "1"})["status_code"] == 2
        assert call(ws, GET, {"id": 2**31})["status_code"] == 2
        assert ok(call(ws, CREATE, {"name": "n" * 200}))["name"] == "n" * 200


def test_sql_looking_input_is_stored_verbatim(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    headers = auth_header(tokens["alice"])
    name = 'Robert\'); DROP TABLE projects;-- \\ % _ "q" ünï 💥'
    created = db_client.post(
        "/projects", json={"name": name, "description": "' OR 1=1 --"}, headers=headers
    ).json()
    fetched = db_client.get(f"/projects/{created['id']}", headers=headers).json()
    assert fetched["name"] == name and fetched["description"] == "' OR 1=1 --"
    assert (
        db_client.get("/projects", params={"search": "'); DROP"}, headers=headers).json()["meta"][
            "total"
        ]
        == 1
    )


def test_rest_body_that_is_not_json(db_client: TestClient, tokens: dict[str, str]) -> None:
    headers = {**auth_header(tokens["alice"]), "content-type": "application/json"}
    for body in (b"{not json", b"[1,2]", b"\xff\xfe"):
        response = db_client.post("/projects", content=body, headers=headers)
        assert response.status_code == 422
        assert response.json()["status_code"] == 2
    assert db_client.get("/projects", headers=headers).json()["meta"]["total"] == 0


def test_concurrent_updates_from_two_sockets(db_client: TestClient, tokens: dict[str, str]) -> None:
    headers = auth_header(tokens["alice"])
    project = db_client.post("/projects", json={"name": "race"}, headers=headers).json()
    with (
        db_client.websocket_connect("/ws", headers=headers) as one,
        db_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as two,
    ):
        sockets: list[WebSocketTestSession] = [one, two]
        for round_ in range(10):
            for n, ws in enumerate(sockets):
                ws.send_text(
                    json.dumps(
                        {
                            "pkg_id": UPDATE,
                            "req_id": f"{round_}-{n}",
                            "data": {"id": project["id"], "name": f"by {n}"},
                        }
                    )
                )
        answers = [ws.receive_json() for _ in range(10) for ws in sockets]
    assert all(a["status_code"] == 0 for a in answers)
    final = db_client.get(f"/projects/{project['id']}", headers=headers).json()
    assert final["name"] in {"by 0", "by 1"}
    assert stamp(final["updated_at"]) >= max(stamp(a["data"]["updated_at"]) for a in answers)
    assert stamp(final["updated_at"]) >= stamp(project["updated_at"])


def test_authors(db_client: TestClient, tokens: dict[str, str]) -> None:
    user, admin = auth_header(tokens["alice"]), auth_header(tokens["root"])
    assert db_client.post("/authors", json={"name": "Ann"}, headers=user).status_code == 403
    ann = db_client.post("/authors", json={"name": "Ann"}, headers=admin)
    assert ann.status_code == 201 and ann.json()["name"] == "Ann"
    stamp(ann.json()["created_at"])
    duplicate = db_client.post("/authors", json={"name": "Ann"}, headers=admin)
    assert duplicate.status_code == 409 and duplicate.json()["status_code"] == 8
    assert "SQL" not in duplicate.text and "UNIQUE" not in duplicate.text.upper()
    for name in ("Ben", "Bea", "Cy"):
        db_client.post("/authors", json={"name": name}, headers=admin)
    assert [a["name"] for a in db_client.get("/authors", headers=user).json()] == [
        "Ann",
        "Ben",
        "Bea",
        "Cy",
    ]
    with db_client.websocket_connect("/ws", headers=user) as ws:
        assert ok(call(ws, AUTHORS_LIST))[0]["name"] == "Ann"  # id 1 stays authors.list
        assert call(ws, AUTHORS_PAGE, {})["status_code"] == 3  # id 2 is admin only
    with db_client.websocket_connect("/ws", headers=admin) as ws:
        page = call(ws, AUTHORS_PAGE, {"page": 1, "per_page": 2, "filters": {"name": "b"}})
        assert [a["name"] for a in page["data"]] == ["Ben", "Bea"]
        assert page["meta"] == {"page": 1, "per_page": 2, "total": 2, "pages": 1}
        assert call(ws, AUTHORS_CREATE, {"name": ""})["status_code"] == 2


def test_totals_follow_every_write_in_each_tenant(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    """`meta.total` comes from counts kept by triggers: it must match the rows after
    creates, soft deletes (twice), updates, in two tenants, with and without deleted."""
    alice, bob = auth_header(tokens["alice"]), auth_header(tokens["bob"])
    ids = [
        db_client.post("/projects", json={"name": f"p{i}"}, headers=alice).json()["id"]
        for i in range(7)
    ]
    db_client.post("/projects", json={"name": "theirs"}, headers=bob)
    for project_id in ids[:3]:
        db_client.delete(f"/projects/{project_id}", headers=alice)
    db_client.delete(f"/projects/{ids[0]}", headers=alice)  # again: no change
    db_client.patch(f"/projects/{ids[5]}", json={"name": "renamed"}, headers=alice)

    def totals(headers: dict[str, str]) -> tuple[int, int, int]:
        live = db_client.get("/projects?per_page=100", headers=headers).json()
        every = db_client.get("/projects?per_page=100&include_deleted=true", headers=headers).json()
        found = db_client.get("/projects?search=p", headers=headers).json()  # counted rows
        assert live["meta"]["total"] == len(live["data"])
        assert every["meta"]["total"] == len(every["data"])
        return live["meta"]["total"], every["meta"]["total"], found["meta"]["total"]

    assert totals(alice) == (4, 7, 3)  # p3, p4, p6 match "p"; "renamed" does not
    assert totals(bob) == (1, 1, 0)
    assert totals(auth_header(tokens["carl"])) == (4, 7, 3)  # same tenant as alice

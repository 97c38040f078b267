"""Issue 11, item 12: tenancy details.

- A project's representation carries its `tenant_id`, on both doors and in its events.
- A token without the tenant claim lands in the personal tenant `user:<sub>`, never in a
  real tenant whose id equals its `sub`; a tenant claim spelt like a personal tenant is
  refused (4401 / 401 `invalid claim tenant_id`).
- `broadcast` reaches every tenant, so only `operator` publishes there (with the shipped
  permissions.toml); a tenant's admin announces on `broadcast.<its tenant>`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from realtime.app import create_app, load_handlers
from realtime.auth.dev import DevIssuer
from realtime.settings import Settings
from tests.conftest import ROOT, make_settings
from tests.helpers import auth_header, call, request

CREATE, LIST, GET, UPDATE = 10, 11, 12, 13
SUBSCRIBE, PUBLISH = 30, 32
ECHO, ME = 40, 41
DENIED = 3


def test_a_project_carries_its_tenant_on_both_doors(
    db_client: TestClient, issuer: DevIssuer
) -> None:
    alice = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    created = db_client.post("/projects", json={"name": "alpha"}, headers=alice)
    assert created.status_code == 201 and created.json()["tenant_id"] == "acme"
    project_id = created.json()["id"]
    assert db_client.get(f"/projects/{project_id}", headers=alice).json()["tenant_id"] == "acme"
    patched = db_client.patch(f"/projects/{project_id}", json={"name": "a2"}, headers=alice)
    assert patched.json()["tenant_id"] == "acme"
    listed = db_client.get("/projects", headers=alice).json()["data"]
    assert [(p["id"], p["tenant_id"]) for p in listed] == [(project_id, "acme")]

    with db_client.websocket_connect("/ws", headers=alice) as ws:
        made = call(ws, CREATE, {"name": "beta"}, "c")
        assert made["status_code"] == 0 and made["data"]["tenant_id"] == "acme", made
        for pkg_id, data in (
            (GET, {"id": made["data"]["id"]}),
            (UPDATE, {"id": made["data"]["id"], "description": "d"}),
        ):
            assert call(ws, pkg_id, data)["data"]["tenant_id"] == "acme"
        answer = call(ws, LIST, {})
        assert {p["tenant_id"] for p in answer["data"]} == {"acme"} and answer["meta"]["total"] == 2
        # the event of a change carries the same representation
        assert call(ws, SUBSCRIBE, {"topic": "projects.acme"})["status_code"] == 0
        request(ws, UPDATE, {"id": project_id, "name": "a3"}, "u")
        frames = [ws.receive_json(), ws.receive_json()]
        answered = next(f for f in frames if f.get("req_id") == "u")
        event = next(f for f in frames if f.get("event") == "message")
        assert event["data"]["project"] == answered["data"]
        assert answered["data"]["tenant_id"] == "acme"

    catalog = {p["name"]: p for p in db_client.get("/packages", headers=alice).json()}
    for name in ("projects.create", "projects.list", "projects.get", "projects.update"):
        assert "tenant_id" in catalog[name]["response_schema"]["required"], name


def test_a_token_without_the_tenant_claim_cannot_land_in_the_tenant_named_by_its_sub(
    db_client: TestClient, issuer: DevIssuer
) -> None:
    real = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    squatter = auth_header(issuer.mint("acme", ["user"]))  # no tenant claim, sub "acme"
    theirs = db_client.post("/projects", json={"name": "acme's"}, headers=real).json()

    assert db_client.get("/me", headers=squatter).json()["tenant_id"] == "user:acme"
    assert db_client.get("/projects", headers=squatter).json()["data"] == []
    missing = db_client.get(f"/projects/{theirs['id']}", headers=squatter)
    assert (missing.status_code, missing.json()["error"]["message"]) == (404, "project not found")
    own = db_client.post("/projects", json={"name": "mine"}, headers=squatter).json()
    assert own["tenant_id"] == "user:acme"
    with db_client.websocket_connect("/ws", headers=squatter) as ws:
        assert call(ws, ME)["data"]["tenant_id"] == "user:acme"
        assert call(ws, SUBSCRIBE, {"topic": "projects.acme"})["status_code"] == DENIED
        assert call(ws, SUBSCRIBE, {"topic": "projects.user:acme"})["status_code"] == 0

    # control: the real tenant still sees exactly its own project
    listed = db_client.get("/projects", headers=real).json()["data"]
    assert [p["id"] for p in listed] == [theirs["id"]]


def test_a_tenant_claim_spelt_like_a_personal_tenant_is_refused(
    client: TestClient, issuer: DevIssuer
) -> None:
    forged = issuer.mint("eve", ["user"], tenant="user:acme")
    refused = client.get("/me", headers=auth_header(forged))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "invalid claim tenant_id"
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/ws", headers=auth_header(forged)) as ws,
    ):
        ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (4401, "invalid claim tenant_id")
    # control: a real tenant whose id merely contains the word is fine
    control = auth_header(issuer.mint("eve", ["user"], tenant="acme-user:x"))
    assert client.get("/me", headers=control).json()["tenant_id"] == "acme-user:x"


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[tuple[TestClient, DevIssuer]]:
    """The application with the permissions.toml it ships with."""
    settings: Settings = make_settings(tmp_path, permissions_file=str(ROOT / "permissions.toml"))
    issuer = DevIssuer.load_or_create(
        settings.dev_key_file,
        audience=settings.keycloak_audience,
        client_id=settings.keycloak_client_id,
    )
    with TestClient(create_app(settings, load_handlers(("handlers",))[0])) as test_client:
        yield test_client, issuer


def test_only_an_operator_publishes_on_broadcast(shipped: tuple[TestClient, DevIssuer]) -> None:
    client, issuer = shipped
    tokens = {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "globex-admin": issuer.mint("gina", ["user", "admin"], tenant="globex"),
        "acme-admin": issuer.mint("root", ["user", "admin"], tenant="acme"),
        "operator": issuer.mint("ops", ["user", "operator"], tenant="ops"),
    }

    def socket(name: str) -> Any:
        return client.websocket_connect("/ws", headers=auth_header(tokens[name]))

    with socket("alice") as alice, socket("globex-admin") as intruder, socket("operator") as ops:
        assert call(alice, SUBSCRIBE, {"topic": "broadcast"})["status_code"] == 0
        assert call(alice, SUBSCRIBE, {"topic": "broadcast.acme"}, "s2")["status_code"] == 0
        refused = call(intruder, PUBLISH, {"topic": "broadcast", "data": "to all"})
        assert refused["status_code"] == DENIED
        assert refused["error"]["message"] == "you may not publish on topic 'broadcast'"
        elsewhere = call(intruder, PUBLISH, {"topic": "broadcast.acme", "data": "to acme"})
        assert elsewhere["status_code"] == DENIED
        assert call(intruder, PUBLISH, {"topic": "broadcast.globex", "data": 1})["status_code"] == 0
        # control: the operator reaches alice; nothing of the refused publications came first
        assert call(ops, PUBLISH, {"topic": "broadcast", "data": "maintenance"})["status_code"] == 0
        event = alice.receive_json()
        assert (event["topic"], event["data"]) == ("broadcast", "maintenance")

    with socket("acme-admin") as admin, socket("alice") as alice, socket("bob") as bob:
        assert call(alice, SUBSCRIBE, {"topic": "broadcast.acme"})["status_code"] == 0
        assert call(bob, SUBSCRIBE, {"topic": "broadcast.acme"})["status_code"] == DENIED
        assert call(admin, PUBLISH, {"topic": "broadcast", "data": "x"})["status_code"] == DENIED
        answer = call(admin, PUBLISH, {"topic": "broadcast.acme", "data": "tenant news"})
        assert answer["status_code"] == 0
        event = alice.receive_json()
        assert (event["topic"], event["data"]) == ("broadcast.acme", "tenant news")
        assert call(bob, ECHO, {"x": 1})["status_code"] == 0  # control

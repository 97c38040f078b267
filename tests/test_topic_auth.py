"""Subscribe authorization for handler authors: `Topic(pattern, authorizer)` in a handler
module's TOPICS, after the roles of permissions.toml; the shipped example `project.{id}`
(handlers/projects.py) on both databases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from realtime.auth.principal import Principal
from realtime.exceptions import ConfigError
from realtime.packages import Context
from realtime.topics import Topic, TopicPermissions
from tests.conftest import build_app, make_settings
from tests.helpers import auth_header, call

SUBSCRIBE, PUBLISH, PRESENCE, ECHO = 30, 32, 33, 40
NOT_FOUND, PERMISSION_DENIED = 4, 3


@pytest.fixture
def tokens(issuer: DevIssuer) -> dict[str, str]:
    return {
        "alice": issuer.mint("alice", ["user"], tenant="acme"),
        "carl": issuer.mint("carl", ["user"], tenant="acme"),
        "bob": issuer.mint("bob", ["user"], tenant="globex"),
        "guest": issuer.mint("gus", ["guest"], tenant="acme"),  # acme, but not a `user`
    }


def _project(client: TestClient, token: str, name: str = "p") -> int:
    answer = client.post("/projects", json={"name": name}, headers=auth_header(token))
    assert answer.status_code == 201
    return int(answer.json()["id"])


def test_a_member_of_the_projects_tenant_subscribes_and_resumes(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    project = _project(db_client, tokens["alice"])
    topic = f"project.{project}"
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as ws:
        first = call(ws, SUBSCRIBE, {"topic": topic})
        assert first["status_code"] == 0, first
        patched = db_client.patch(
            f"/projects/{project}", json={"name": "q"}, headers=auth_header(tokens["alice"])
        ).json()
        event = ws.receive_json()
        assert event["event"] == "message" and event["topic"] == topic
        assert event["data"] == {"op": "updated", "project": patched}
        resumed = call(ws, SUBSCRIBE, {"topic": topic, "since": first["data"]["offset"]})
        assert resumed["status_code"] == 0 and resumed["data"]["recovered"] is True
        assert ws.receive_json()["offset"] == event["offset"]  # the replay: exactly that one
        assert call(ws, ECHO, {"end": 1})["data"] == {"end": 1}


def test_another_tenant_is_not_found_at_subscribe_resume_and_presence(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    project = _project(db_client, tokens["alice"])
    topic = f"project.{project}"
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as member:
        offset = call(member, SUBSCRIBE, {"topic": topic})["data"]["offset"]
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["bob"])) as stranger:
        attempts = [
            call(stranger, SUBSCRIBE, {"topic": topic}),
            call(stranger, SUBSCRIBE, {"topic": topic, "since": offset}),  # a resume
            call(stranger, PRESENCE, {"topic": topic}),
        ]
        assert [a["status_code"] for a in attempts] == [NOT_FOUND] * 3
        assert {a["error"]["message"] for a in attempts} == {"project not found"}
        # his own tenant's project of the same number space: no difference to a missing one
        assert call(stranger, SUBSCRIBE, {"topic": "project.999999"})["status_code"] == NOT_FOUND
        assert call(stranger, SUBSCRIBE, {"topic": "project.x1"})["status_code"] == NOT_FOUND
        db_client.patch(
            f"/projects/{project}", json={"name": "q"}, headers=auth_header(tokens["alice"])
        )
        assert call(stranger, ECHO, {"x": 1})["data"] == {"x": 1}  # nothing was delivered


def test_a_deleted_project_admits_nobody(db_client: TestClient, tokens: dict[str, str]) -> None:
    project = _project(db_client, tokens["alice"])
    db_client.delete(f"/projects/{project}", headers=auth_header(tokens["alice"]))
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as ws:
        assert call(ws, SUBSCRIBE, {"topic": f"project.{project}"})["status_code"] == NOT_FOUND


def test_roles_are_checked_before_the_authorizer(
    db_client: TestClient, tokens: dict[str, str]
) -> None:
    project = _project(db_client, tokens["alice"])
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["guest"])) as ws:
        # the authorizer would admit this acme caller, and say NOT_FOUND for the missing
        # project: both are PERMISSION_DENIED, so it never ran
        for topic in (f"project.{project}", "project.999999"):
            answer = call(ws, SUBSCRIBE, {"topic": topic})
            assert answer["status_code"] == PERMISSION_DENIED, answer
    with db_client.websocket_connect("/ws", headers=auth_header(tokens["carl"])) as ws:
        # a member, but nobody may publish there (no publish roles): the server only
        answer = call(ws, PUBLISH, {"topic": f"project.{project}", "data": 1})
        assert answer["status_code"] == PERMISSION_DENIED


# -- the declarations ---------------------------------------------------------------------


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


HEADER = "from realtime import Topic\nasync def ok(ctx, params):\n    return True\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            HEADER + 'TOPICS = [Topic("nowhere.{id}", ok)]\n',
            "Topic 'nowhere.{id}' has no [topics.'nowhere.{id}'] entry in permissions",
        ),
        (
            HEADER + 'TOPICS = [Topic("chat.*", ok), Topic("chat.*", ok)]\n',
            "Topic 'chat.*' is declared twice",
        ),
    ],
)
def test_bad_declarations_stop_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, message: str
) -> None:
    name = _module(tmp_path, monkeypatch, f"topics_{abs(hash(body))}", body)
    settings = make_settings(tmp_path)
    settings = settings.replace(handlers=(*settings.handlers, name))
    with pytest.raises(ConfigError) as stopped:
        build_app(settings)
    assert str(stopped.value) == message
    assert "\n" not in str(stopped.value)


def test_a_placeholder_named_twice_stops_start_up() -> None:
    with pytest.raises(ConfigError, match="a placeholder is named twice"):
        TopicPermissions({"room.{id}.{id}": {"subscribe": frozenset({"user"})}})


def _principal(sub: str = "alice", tenant: str = "acme") -> Principal:
    claims = {"sub": sub, "tenant_id": tenant, "exp": 0, "realm_access": {"roles": ["user"]}}
    return Principal.from_claims(claims, client_id="realtime", tenant_claim="tenant_id")


async def _authorized(rules: TopicPermissions, topic: str) -> None:
    class Ctx:
        principal = _principal()

    await rules.authorize(Ctx(), topic, "subscribe")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_named_segments_reach_the_authorizer_and_sub_stays_bound() -> None:
    seen: list[dict[str, str]] = []

    async def record(ctx: Context, params: dict[str, str]) -> bool:
        seen.append(params)
        return params["room"] != "closed"

    table = {"chat.{tenant}.{room}.{sub}": {"subscribe": frozenset({"user"})}}
    rules = TopicPermissions(table, [Topic("chat.{tenant}.{room}.{sub}", record)])
    await _authorized(rules, "chat.acme.lobby.alice")
    assert seen == [{"room": "lobby"}]  # {sub} and {tenant} are the caller's, not params
    for denied in ("chat.acme.closed.alice", "chat.globex.lobby.alice", "chat.acme.a.b.alice"):
        with pytest.raises(Exception, match="you may not subscribe") as error:
            await _authorized(rules, denied)
        assert type(error.value).__name__ == "PermissionDenied"
    assert seen == [{"room": "lobby"}, {"room": "closed"}]  # the others failed on the roles

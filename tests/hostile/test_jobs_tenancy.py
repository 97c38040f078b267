"""Issue 11, item 9: `jobs.list` is scoped by tenant as `jobs.status` is. Before, a token
with the same `sub` in another tenant listed the job that `jobs.status` called NOT_FOUND.
On SQLite and on PostgreSQL (fixture `engine`), over REST and the socket."""

from __future__ import annotations

from starlette.testclient import TestClient

from realtime.auth.dev import DevIssuer
from tests.helpers import auth_header, call

LIST = 24
EMPTY_PAGE = {"page": 1, "per_page": 20, "total": 0, "pages": 0}


def test_the_same_sub_in_another_tenant_lists_none_of_the_jobs(
    db_client: TestClient, issuer: DevIssuer
) -> None:
    owner = auth_header(issuer.mint("alice", ["user"], tenant="acme"))
    namesake = auth_header(issuer.mint("alice", ["user"], tenant="globex"))
    started = db_client.post("/jobs", json={"total_steps": 1, "step_seconds": 0}, headers=owner)
    assert started.status_code == 202
    job_id = started.json()["job_id"]

    assert db_client.get("/jobs", headers=namesake).json() == {"data": [], "meta": EMPTY_PAGE}
    with db_client.websocket_connect("/ws", headers=namesake) as ws:
        answer = call(ws, LIST, {})
    assert (answer["status_code"], answer["data"], answer["meta"]) == (0, [], EMPTY_PAGE)
    missing = db_client.get(f"/jobs/{job_id}", headers=namesake)
    assert (missing.status_code, missing.json()["error"]["message"]) == (404, "job not found")

    # control: the owner, in its own tenant, still lists its job
    listed = db_client.get("/jobs", headers=owner).json()
    assert [job["job_id"] for job in listed["data"]] == [job_id]
    assert listed["meta"]["total"] == 1


def test_a_job_of_the_namesake_does_not_show_in_the_owner_list(
    db_client: TestClient, issuer: DevIssuer
) -> None:
    """Both tenants have jobs: each list has exactly its own, and totals agree."""
    tokens = {
        tenant: auth_header(issuer.mint("alice", ["user"], tenant=tenant))
        for tenant in ("acme", "globex")
    }
    jobs = {
        tenant: [
            db_client.post(
                "/jobs", json={"total_steps": 1, "step_seconds": 0}, headers=bearer
            ).json()["job_id"]
            for _ in range(count)
        ]
        for (tenant, bearer), count in zip(tokens.items(), (2, 1), strict=True)
    }
    for tenant, bearer in tokens.items():
        listed = db_client.get("/jobs", headers=bearer).json()
        assert sorted(job["job_id"] for job in listed["data"]) == sorted(jobs[tenant])
        assert listed["meta"]["total"] == len(jobs[tenant])

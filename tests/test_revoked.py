"""The node's copy of the revoked users (realtime.auth.revoked): the `iat <= at` boundary
in whole seconds, a token without `iat`, expiry, and its bound."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from realtime.auth.principal import Principal
from realtime.auth.revoked import Revocations
from realtime.exceptions import AuthError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.5

    def __call__(self) -> float:
        return self.now


def principal(sub: str, tenant: str = "acme", **claims: Any) -> Principal:
    return Principal.from_claims(
        {"sub": sub, "exp": 2_000_000, "tenant_id": tenant, **claims},
        client_id="realtime",
        tenant_claim="tenant_id",
    )


def revoked(revocations: Revocations, who: Principal) -> bool:
    try:
        revocations.check(who)
    except AuthError as error:
        assert error.reason == "token revoked" and error.code == 4401
        return True
    return False


def test_a_token_issued_in_the_revocations_second_is_refused_the_next_second_served() -> None:
    clock = Clock()
    revocations = Revocations(60, clock=clock)
    at = revocations.now()
    assert at == 1_000_000
    revocations.revoke("acme", "alice", at)
    assert revoked(revocations, principal("alice", iat=at))
    assert revoked(revocations, principal("alice", iat=at - 1000))
    assert revoked(revocations, principal("alice"))  # no iat
    assert revoked(revocations, principal("alice", iat=True))  # not a time
    assert not revoked(revocations, principal("alice", iat=at + 1))
    assert not revoked(revocations, principal("bob", iat=at))
    assert not revoked(revocations, principal("alice", "other", iat=at))
    clock.now += 60
    assert not revoked(revocations, principal("alice", iat=at))  # ended
    assert len(revocations) == 0


def test_revoking_again_keeps_the_later_time_and_the_copy_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    revocations = Revocations(60, limit=2, clock=clock)
    revocations.revoke("acme", "alice", 100)
    revocations.revoke("acme", "alice", 90)  # an older order heard late
    assert revoked(revocations, principal("alice", iat=100))
    assert not revoked(revocations, principal("alice", iat=101))
    revocations.revoke("acme", "bob", 100)
    with caplog.at_level(logging.WARNING, "realtime.auth"):
        revocations.revoke("acme", "carl", 100)
    assert len(revocations) == 2
    assert "over 2 users, the oldest dropped" in caplog.text
    # alice's, the oldest, went first
    assert [revoked(revocations, principal(s, iat=50)) for s in ("alice", "bob", "carl")] == [
        False,
        True,
        True,
    ]
    clock.now += 61  # expired ones make room without a warning
    caplog.clear()
    revocations.revoke("acme", "dave", 100)
    assert len(revocations) == 1 and "dropped" not in caplog.text

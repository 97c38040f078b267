"""The verified-token cache (realtime.auth.verifier): one signature check for the many
sockets of one token, never a shortcut past expiry, a changed key, or a failed check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from realtime.auth.dev import DEV_ISSUER, DevIssuer
from realtime.auth.verifier import TokenVerifier
from realtime.exceptions import AuthError


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rotating:
    """The issuer's key, as a new object after `rotate()` (a refreshed key set)."""

    def __init__(self, issuer: DevIssuer) -> None:
        self.issuer = issuer
        self.generation = 0
        self._copies: dict[int, Any] = {}

    async def get(self, kid: str) -> Any:
        key = await self.issuer.get(kid)
        if key is None:
            return None
        return self._copies.setdefault(self.generation, type(key).import_key(key.as_dict()))

    def rotate(self) -> None:
        self.generation += 1


def verifier(keys: Any, clock: Clock, size: int = 10) -> TokenVerifier:
    return TokenVerifier(
        keys,
        issuer=DEV_ISSUER,
        audience="realtime",
        audience_in_azp=True,
        algorithms=("RS256",),
        leeway=0,
        client_id="realtime",
        tenant_claim="tenant_id",
        cache_size=size,
        clock=clock,
    )


@pytest.fixture
def issuer(tmp_path: Path) -> DevIssuer:
    return DevIssuer.load_or_create(
        str(tmp_path / "key.json"), audience="realtime", client_id="realtime"
    )


@pytest.mark.anyio
async def test_one_token_is_verified_once(issuer: DevIssuer) -> None:
    clock = Clock(1_000_000)
    check = verifier(issuer, clock)
    token = issuer.mint("alice", ["user"], now=int(clock.now), ttl=60)
    first = await check.verify(token)
    assert await check.verify(token) is first  # the cached principal, no second check
    other = issuer.mint("alice", ["user"], now=int(clock.now), ttl=60)
    assert await check.verify(other) is not first  # another token of the same user


@pytest.mark.anyio
async def test_an_expired_token_is_refused_though_cached(issuer: DevIssuer) -> None:
    clock = Clock(1_000_000)
    check = verifier(issuer, clock)
    token = issuer.mint("alice", ["user"], now=int(clock.now), ttl=60)
    assert (await check.verify(token)).sub == "alice"
    clock.now += 61
    with pytest.raises(AuthError, match="token expired"):
        await check.verify(token)


@pytest.mark.anyio
async def test_a_changed_key_verifies_again(issuer: DevIssuer) -> None:
    clock = Clock(1_000_000)
    keys = Rotating(issuer)
    check = verifier(keys, clock)
    token = issuer.mint("alice", ["user"], now=int(clock.now), ttl=60)
    first = await check.verify(token)
    keys.rotate()
    again = await check.verify(token)
    assert again is not first and again.sub == "alice"


@pytest.mark.anyio
async def test_failures_are_not_cached_and_the_cache_is_bounded(issuer: DevIssuer) -> None:
    clock = Clock(1_000_000)
    check = verifier(issuer, clock, size=2)
    token = issuer.mint("alice", ["user"], now=int(clock.now), ttl=60)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-4]}AAAA"
    for _ in range(2):
        with pytest.raises(AuthError, match="invalid signature"):
            await check.verify(forged)
    assert len(check._cache) == 0
    tokens = [issuer.mint(f"u{n}", ["user"], now=int(clock.now), ttl=60) for n in range(3)]
    principals = [await check.verify(t) for t in tokens]
    assert len(check._cache) == 2
    assert await check.verify(tokens[0]) is not principals[0]  # evicted, verified again
    assert await check.verify(tokens[2]) is principals[2]

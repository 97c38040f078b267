"""Where verification keys come from: the issuer's JWKS over HTTP, or the dev issuer.

A key source answers `get(kid)`. The JWKS source caches keys and keeps serving them when
the issuer is briefly down. Every fetch is shared: verifications that need one while it
is in flight wait for it (one request to the issuer for all of them).

An unknown `kid` is fetched for at once, so a key the issuer published after our last
fetch (Keycloak signs with a new key as soon as it has one) is accepted on the token's
first try. What bounds random kids is the miss: after a fetch for an unknown kid that did
not bring it, unknown kids are refused without a fetch for `min_refresh` seconds. So
random kids cost at most one fetch per `min_refresh`, and any other fetch for an unknown
kid found a key the issuer really published. The price: a key published during such a
quiet period (someone sent an unknown kid a moment before) is picked up at its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

if TYPE_CHECKING:  # imported where it is used: the dev issuer needs no HTTP client
    import httpx

logger = logging.getLogger("realtime.auth")


class KeySource(Protocol):
    async def get(self, kid: str) -> Key | None: ...


class OIDCProvider:
    """The issuer's discovery document, fetched once and cached."""

    def __init__(self, client: httpx.AsyncClient, issuer: str) -> None:
        self._client = client
        self.issuer = issuer.rstrip("/")
        self._metadata: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def metadata(self) -> dict[str, Any]:
        async with self._lock:
            if self._metadata is None:
                url = f"{self.issuer}/.well-known/openid-configuration"
                response = await self._client.get(url)
                response.raise_for_status()
                document = response.json()
                if not isinstance(document, dict):
                    raise ValueError("discovery document is not a JSON object")
                self._metadata = document
            return self._metadata

    async def endpoint(self, name: str, explicit: str | None) -> str:
        if explicit:
            return explicit
        value = (await self.metadata()).get(name)
        if not isinstance(value, str):
            raise ValueError(f"discovery document has no {name}")
        return value


class JWKSKeys:
    """Keys from a JWKS URL (explicit, or `jwks_uri` from discovery)."""

    def __init__(
        self,
        provider: OIDCProvider,
        client: httpx.AsyncClient,
        *,
        jwks_url: str | None,
        min_refresh: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._client = client
        self._jwks_url = jwks_url
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, Key] = {}
        self._fetched_at = float("-inf")  # the last fetch that brought keys
        self._tried_at = float("-inf")  # the last fetch begun (it may have failed)
        self._missed_at = float("-inf")  # the last unknown kid a fetch did not bring
        self._fetching: asyncio.Task[None] | None = None
        self._wanted: set[str] = set()  # the unknown kids the fetch in flight is for

    async def get(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is not None:
            if self._stale():
                await self._refresh()
            return self._keys.get(kid, key)
        if self._fetching is None and self._clock() - self._missed_at < self._min_refresh:
            return None  # a fetch for an unknown kid came back without it a moment ago
        self._wanted.add(kid)
        await self._refresh()
        self._wanted.discard(kid)  # (already cleared, unless the fetch was joined as it ended)
        key = self._keys.get(kid)
        if key is None:  # (the fetch marked the miss, but for a fetch joined as it ended)
            self._missed_at = self._clock()
        return key

    def _stale(self) -> bool:
        """Older than max_age; while the issuer is down, one attempt per min_refresh."""
        now = self._clock()
        return now - self._fetched_at > self._max_age and now - self._tried_at >= self._min_refresh

    async def _refresh(self) -> None:
        """Fetch, or wait for the fetch in flight. Shielded: a verification given up (its
        socket closed) does not cancel the fetch the others wait for."""
        if self._fetching is None:
            self._fetching = asyncio.create_task(self._load())
            self._fetching.add_done_callback(self._loaded)
        await asyncio.shield(self._fetching)

    def _loaded(self, task: asyncio.Task[None]) -> None:
        self._fetching = None

    async def _load(self) -> None:
        import httpx  # loaded already: the lifespan built the client

        self._tried_at = self._clock()
        try:
            self._keys = await self._fetch()
        except (httpx.HTTPError, ValueError, JoseError) as error:
            # keep the cached keys: a briefly unreachable issuer must not lock users out
            logger.warning(
                "JWKS fetch failed (%s); keeping %d cached keys",
                type(error).__name__,
                len(self._keys),
            )
        else:
            self._fetched_at = self._clock()
        # marked here, before anyone can start another fetch: not when the waiters resume
        missed, self._wanted = self._wanted - self._keys.keys(), set()
        if missed:
            self._missed_at = self._clock()

    async def _fetch(self) -> dict[str, Key]:
        url = await self._provider.endpoint("jwks_uri", self._jwks_url)
        response = await self._client.get(url)
        response.raise_for_status()
        key_set = KeySet.import_key_set(response.json())
        keys = {key.kid: key for key in key_set if key.kid and not _is_private(key)}
        logger.info("JWKS loaded: %d keys", len(keys))
        return keys


def _is_private(key: Key) -> bool:
    # a JWKS must publish public keys only; a symmetric key there would enable forgery
    return key.key_type == "oct"

"""Where verification keys come from: the issuer's JWKS over HTTP, or the dev issuer.

A key source answers `get(kid)`. The JWKS source caches keys, refetches on an unknown
`kid` at most once per `min_refresh` seconds (random kids cannot make us hammer the
issuer), coalesces concurrent refetches into one request, and keeps serving the cached
keys when the issuer is briefly down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

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
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is None or self._clock() - self._fetched_at > self._max_age:
            await self._refresh()
        return self._keys.get(kid, key)

    async def _refresh(self) -> None:
        async with self._lock:
            if self._clock() - self._fetched_at < self._min_refresh:
                return  # fetched a moment ago (perhaps by a concurrent caller)
            self._fetched_at = self._clock()
            try:
                self._keys = await self._fetch()
            except (httpx.HTTPError, ValueError, JoseError) as error:
                # keep the cached keys: a briefly unreachable issuer must not lock users out
                logger.warning(
                    "JWKS fetch failed (%s); keeping %d cached keys",
                    type(error).__name__,
                    len(self._keys),
                )

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

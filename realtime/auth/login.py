"""`POST /auth/login`: the password grant at Keycloak, or the dev users file.

Wrong credentials are one AuthError ("invalid credentials") whichever part was wrong.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from realtime.auth.dev import DevIssuer, DevUser, check_password, hash_password
from realtime.auth.keys import OIDCProvider
from realtime.exceptions import AuthError, Unavailable

if TYPE_CHECKING:  # imported where it is used: the dev issuer needs no HTTP client
    import httpx

logger = logging.getLogger("realtime.auth")
INVALID = "invalid credentials"


class Login(Protocol):
    async def login(self, username: str, password: str) -> dict[str, Any]: ...


class DevLogin:
    """Logins against dev-users.toml, answered with tokens of the development issuer."""

    def __init__(self, issuer: DevIssuer, users: dict[str, DevUser], ttl: int) -> None:
        self._issuer = issuer
        self._users = users
        self._ttl = ttl
        self._dummy_hash: str | None = None

    async def login(self, username: str, password: str) -> dict[str, Any]:
        user = self._users.get(username)
        if not await anyio.to_thread.run_sync(self._check, user, password):
            raise AuthError(INVALID)
        assert user is not None
        token = self._issuer.mint(
            user.username,
            user.roles,
            tenant=user.tenant,
            ttl=self._ttl,
            name=user.name,
            email=user.email,
        )
        return {"access_token": token, "token_type": "Bearer", "expires_in": self._ttl}

    def _check(self, user: DevUser | None, password: str) -> bool:
        """In a thread (PBKDF2 takes ~0.1 s). An unknown user is checked against a dummy
        hash, so both failures cost the same time; the dummy is made on first use, not
        at import (every process that imports the framework paid for it)."""
        if user is not None:
            return check_password(password, user.password_hash)
        if self._dummy_hash is None:
            self._dummy_hash = hash_password("not a password", salt="0" * 16)
        check_password(password, self._dummy_hash)
        return False


class KeycloakLogin:
    def __init__(
        self,
        provider: OIDCProvider,
        client: httpx.AsyncClient,
        *,
        client_id: str,
        client_secret: str | None,
        token_url: str | None,
    ) -> None:
        self._provider = provider
        self._client = client
        self._form = {"grant_type": "password", "client_id": client_id, "scope": "openid"}
        if client_secret:
            self._form["client_secret"] = client_secret
        self._token_url = token_url

    async def login(self, username: str, password: str) -> dict[str, Any]:
        import httpx  # loaded already: the lifespan built the client

        try:
            url = await self._provider.endpoint("token_endpoint", self._token_url)
            form = self._form | {"username": username, "password": password}
            response = await self._client.post(url, data=form)
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("identity provider unreachable: %s", type(error).__name__)
            raise Unavailable(5, "identity provider unavailable") from None
        if response.status_code in (400, 401):
            raise AuthError(INVALID)
        if response.status_code != 200:
            logger.warning("identity provider answered %d to a login", response.status_code)
            raise Unavailable(5, "identity provider unavailable")
        body = response.json()
        keep = ("access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in")
        return {key: body[key] for key in keep if key in body}

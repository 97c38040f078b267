"""A small OpenID provider served over real HTTP in the tests: discovery, JWKS, token.

It counts JWKS fetches, can rotate to a new signing key, go down, and answer the password
grant for one user, so the server's verifier and login are tested end to end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import serve

REALM = "/realms/test"


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


class Provider:
    def __init__(self) -> None:
        self.keys = [new_key("k1")]
        self.jwks_hits = 0
        self.down = False
        self.issuer = ""  # set once the server has a port
        self.users = {"carol": "s3cret"}
        self.app = Starlette(
            routes=[
                Route(f"{REALM}/.well-known/openid-configuration", self.discovery),
                Route(f"{REALM}/protocol/openid-connect/certs", self.certs),
                Route(f"{REALM}/protocol/openid-connect/token", self.token, methods=["POST"]),
            ]
        )

    @property
    def signing_key(self) -> RSAKey:
        return self.keys[-1]

    def rotate(self, kid: str) -> None:
        self.keys.append(new_key(kid))

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/protocol/openid-connect/certs",
                "token_endpoint": f"{self.issuer}/protocol/openid-connect/token",
            }
        )

    async def certs(self, request: Request) -> Response:
        if self.down:
            return Response("down", 503)
        self.jwks_hits += 1
        return JSONResponse(KeySet(list(self.keys)).as_dict(private=False))

    async def token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if self.down:
            return Response("down", 503)
        if form.get("grant_type") != "password" or form.get("client_id") != "realtime":
            return JSONResponse({"error": "unauthorized_client"}, 400)
        if self.users.get(str(form.get("username"))) != form.get("password"):
            return JSONResponse({"error": "invalid_grant"}, 401)
        access = self.mint(sub=str(form["username"]))
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 300,
                "refresh_token": "opaque",
                "id_token": "not-for-clients",
            }
        )

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": ["realtime", "account"],
            "azp": "realtime",
            "sub": "u-123",
            "typ": "Bearer",
            "iat": now,
            "exp": now + 300,
            "preferred_username": "carol",
            "email": "carol@example.com",
            "name": "Carol C",
            "realm_access": {"roles": ["user", "offline_access"]},
            "resource_access": {"realtime": {"roles": ["editor"]}, "account": {"roles": ["x"]}},
            "tenant_id": "acme",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self, header: dict[str, Any] | None = None, key: RSAKey | None = None, **claims: Any
    ) -> str:
        key = key or self.signing_key
        head = {"alg": "RS256", "kid": key.kid, "typ": "JWT", **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(head, self.claims(**claims), key, algorithms=[head["alg"]])


@contextmanager
def running_provider() -> Iterator[Provider]:
    provider = Provider()
    with serve(provider.app) as address:
        provider.issuer = f"http://{address}{REALM}"
        yield provider

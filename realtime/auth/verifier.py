"""Access-token verification (PROTOCOL.md 1.1) with joserfc.

joserfc's `jwt.decode` checks only the signature, and its claims registry checks a claim
only when present: so the algorithms are always passed, `kid` is required, and `exp`,
`iss`, `sub` are marked essential; the audience is checked here (Keycloak puts the
client in `azp` and often `aud: account`).

A token that verified is remembered by its SHA-256 (never the token itself), so the many
sockets of a reconnect storm or of one user's tabs cost one signature check, not one
each. An entry is used only while its token has not expired and while the key source
still gives the very key that verified it (a rotated or refreshed key set verifies again),
and the cache is bounded (least recently used out first). Failures are never cached.

Every principal established, from the cache or not, is then checked against the node's
revocations (realtime.auth.revoked: a dict lookup): a user cut off by
`sessions.disconnect` gets `token revoked` for the tokens issued until then.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwt import JWTClaimsRegistry

from realtime.auth.keys import KeySource
from realtime.auth.principal import Principal
from realtime.auth.revoked import Revocations
from realtime.exceptions import AuthError

MAX_TOKEN_BYTES = 16 * 1024


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        audience_in_azp: bool,
        algorithms: tuple[str, ...],
        leeway: int,
        client_id: str,
        tenant_claim: str,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        revocations: Revocations | None = None,
    ) -> None:
        self._keys = keys
        self._revocations = revocations
        self._cache: OrderedDict[bytes, tuple[Principal, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock
        self.issuer = issuer
        self._audience = audience
        self._audience_in_azp = audience_in_azp
        self._algorithms = list(algorithms)
        self._leeway = leeway
        self._client_id = client_id
        self._tenant_claim = tenant_claim

    async def verify(self, token: str) -> Principal:
        """Return the token's principal, or raise AuthError with a short safe reason."""
        principal = await self._verified(token)
        if self._revocations is not None:
            self._revocations.check(principal)
        return principal

    async def _verified(self, token: str) -> Principal:
        kid = self._read_header(token)
        key = await self._keys.get(kid)
        if key is None:
            raise AuthError("unknown signing key")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            principal, verified_with = cached
            if verified_with is key and self._clock() < principal.expires_at:
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
        principal = self._verify(token, key)
        self._remember(digest, principal, key)
        return principal

    def _remember(self, digest: bytes, principal: Principal, key: Any) -> None:
        if self._cache_size <= 0 or self._clock() >= principal.expires_at:
            return  # accepted within the leeway only: not for later
        self._cache[digest] = (principal, key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _verify(self, token: str, key: Any) -> Principal:
        try:
            claims = jwt.decode(token, key, algorithms=self._algorithms).claims
        except JoseError:
            raise AuthError("invalid signature") from None
        self._check_claims(claims)
        return Principal.from_claims(
            claims, client_id=self._client_id, tenant_claim=self._tenant_claim
        )

    def _read_header(self, token: str) -> str:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise AuthError("malformed token")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError):
            raise AuthError("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self._algorithms:
            raise AuthError("algorithm not allowed")
        if not isinstance(kid, str) or not kid:
            raise AuthError("token has no kid")
        return kid

    def _check_claims(self, claims: dict[str, Any]) -> None:
        registry = JWTClaimsRegistry(
            now=lambda: int(self._clock()),  # the cache's clock: one notion of "expired"
            leeway=self._leeway,
            iss={"essential": True, "value": self.issuer},
            sub={"essential": True},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthError("token expired") from None
        except MissingClaimError as error:
            raise AuthError(f"missing claim {error.claim}") from None
        except ClaimError as error:
            raise AuthError(_claim_reason(error.claim)) from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise AuthError("invalid claim sub")
        if claims.get("typ", "Bearer") != "Bearer":
            raise AuthError("not an access token")
        if not self._audience_ok(claims):
            raise AuthError("wrong audience")

    def _audience_ok(self, claims: dict[str, Any]) -> bool:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self._audience in audiences:
            return True
        return self._audience_in_azp and claims.get("azp") == self._audience


def _claim_reason(claim: str) -> str:
    return {
        "iss": "wrong issuer",
        "nbf": "token not yet valid",
        "iat": "token issued in the future",
    }.get(claim, f"invalid claim {claim}")

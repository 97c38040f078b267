"""The development issuer: the embedded default signs and trusts its own RSA key.

It exists only when KEYCLOAK_ISSUER is unset; with a real issuer configured it is never
built, so its tokens (issuer `urn:realtime:dev`, unknown `kid`) are rejected. The key is
kept in a local file (mode 0600) so tokens survive restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, RSAKey

from realtime.exceptions import ConfigError

DEV_ISSUER = "urn:realtime:dev"
DEV_ALGORITHM = "RS256"


class DevIssuer:
    def __init__(self, key: RSAKey, *, audience: str, client_id: str) -> None:
        self._key = key
        self._audience = audience
        self._client_id = client_id
        self.kid = str(key.kid)

    @classmethod
    def load_or_create(cls, path: str, *, audience: str, client_id: str) -> DevIssuer:
        return cls(_load_or_create_key(Path(path)), audience=audience, client_id=client_id)

    async def get(self, kid: str) -> Key | None:
        return self._key if kid == self.kid else None

    def mint(
        self,
        sub: str,
        roles: list[str],
        *,
        tenant: str | None = None,
        ttl: int = 3600,
        name: str | None = None,
        email: str | None = None,
        now: int | None = None,
    ) -> str:
        issued = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "iss": DEV_ISSUER,
            "aud": self._audience,
            "azp": self._client_id,
            "sub": sub,
            "typ": "Bearer",
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl,
            "jti": secrets.token_hex(8),
            "preferred_username": sub,
            "realm_access": {"roles": roles},
        }
        claims |= {k: v for k, v in (("tenant_id", tenant), ("name", name), ("email", email)) if v}
        header = {"alg": DEV_ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[DEV_ALGORITHM])


def _load_or_create_key(path: Path) -> RSAKey:
    if not path.exists():
        _create_key(path)
    try:
        return RSAKey.import_key(json.loads(path.read_text()))
    except (OSError, ValueError, JoseError) as error:
        raise ConfigError(f"REALTIME_DEV_KEY_FILE: cannot read {path}: {error}") from None


def _create_key(path: Path) -> None:
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": DEV_ALGORITHM})
    key.ensure_kid()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    # link() fails if another process created the key first; theirs wins, ours is dropped
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
    tmp.unlink()


@dataclass(frozen=True)
class DevUser:
    username: str
    password_hash: str
    roles: list[str]
    tenant: str | None
    name: str | None
    email: str | None


def hash_password(password: str, *, iterations: int = 100_000, salt: str | None = None) -> str:
    salt = salt or secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${digest.hex()}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, _ = encoded.split("$")
        expected = hash_password(password, iterations=int(iterations), salt=salt)
    except ValueError:
        return False
    return scheme == "pbkdf2_sha256" and hmac.compare_digest(expected, encoded)


def load_dev_users(path: str) -> dict[str, DevUser]:
    """Users of the dev users file; a missing file means nobody can log in."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as handle:
            users = tomllib.load(handle).get("users", {})
        return {name: _dev_user(name, entry) for name, entry in users.items()}
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"REALTIME_DEV_USERS_FILE: {path}: {error}") from None


def _dev_user(name: str, entry: dict[str, Any]) -> DevUser:
    return DevUser(
        username=name,
        password_hash=entry["password"],
        roles=list(entry.get("roles", [])),
        tenant=entry.get("tenant"),
        name=entry.get("name"),
        email=entry.get("email"),
    )

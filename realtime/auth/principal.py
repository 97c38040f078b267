"""The authenticated caller, mapped from Keycloak's access-token claims."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realtime.exceptions import AuthError
from realtime.types import Roles

# The tenant of a token without the tenant claim: a personal tenant named after its
# subject. Tenant claims with this prefix are refused, so no real tenant can equal one.
PERSONAL_TENANT = "user:"


@dataclass(frozen=True, slots=True)
class Principal:
    sub: str
    username: str | None
    email: str | None
    name: str | None
    realm_roles: Roles
    client_roles: dict[str, Roles]
    tenant_id: str
    expires_at: int
    raw_claims: dict[str, Any] = field(repr=False)
    # realm roles plus the roles of our own client: what permissions.toml is checked against
    roles: Roles = frozenset()

    @classmethod
    def from_claims(cls, claims: dict[str, Any], *, client_id: str, tenant_claim: str) -> Principal:
        realm_roles = frozenset(_strings((claims.get("realm_access") or {}).get("roles")))
        client_roles = {
            client: frozenset(_strings((access or {}).get("roles")))
            for client, access in _dict(claims.get("resource_access")).items()
        }
        return cls(
            sub=str(claims["sub"]),
            username=_opt_str(claims.get("preferred_username")),
            email=_opt_str(claims.get("email")),
            name=_opt_str(claims.get("name")),
            realm_roles=realm_roles,
            client_roles=client_roles,
            tenant_id=_tenant(claims, tenant_claim),
            expires_at=int(claims["exp"]),
            raw_claims=claims,
            roles=realm_roles | client_roles.get(client_id, frozenset()),
        )

    def public(self) -> dict[str, Any]:
        """What `me` and `GET /me` answer: the caller, without the raw token claims."""
        return {
            "sub": self.sub,
            "username": self.username,
            "email": self.email,
            "name": self.name,
            "realm_roles": sorted(self.realm_roles),
            "client_roles": {client: sorted(roles) for client, roles in self.client_roles.items()},
            "roles": sorted(self.roles),
            "tenant_id": self.tenant_id,
            "expires_at": self.expires_at,
        }


def _tenant(claims: dict[str, Any], tenant_claim: str) -> str:
    """The claim's tenant; without one, the subject's personal tenant (`user:<sub>`),
    never a real tenant whose id happens to equal the `sub`."""
    tenant = claims.get(tenant_claim)
    if isinstance(tenant, bool) or not isinstance(tenant, str | int) or tenant == "":
        return f"{PERSONAL_TENANT}{claims['sub']}"
    if str(tenant).startswith(PERSONAL_TENANT):
        raise AuthError(f"invalid claim {tenant_claim}")
    return str(tenant)


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None

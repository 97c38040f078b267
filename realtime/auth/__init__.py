"""Authentication: token verification, key sources, the development issuer, login."""

from realtime.auth.principal import Principal
from realtime.auth.verifier import TokenVerifier

__all__ = ["Principal", "TokenVerifier"]

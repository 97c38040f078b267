"""Revoked users: "tokens of this user issued at or before <at> are refused" (issue 14).

`sessions.disconnect` records one for the user it cuts off (realtime.sessions), for
REALTIME_REVOKE_SECONDS. This is the node's own copy of those in force, which the token
verifier reads for every principal it establishes (socket handshake, first frame,
`auth.refresh`, REST): a dict lookup, never a call to Redis. With REDIS_URL it is fed by
the disconnect orders the node hears and loaded from Redis when the node subscribes to
them (realtime.sessions.RedisSessions); on the embedded default it is the only record.

The time is in whole seconds, as `iat` is: a token is refused when `iat <= at`, so a
token minted in the very second of the disconnect is refused too, and the user's next
login a second later is accepted. A token without `iat` cannot say when it was issued:
it is refused for as long as the revocation lasts.

Bounded: at most `limit` users; beyond, the oldest revocation goes first (logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from realtime.exceptions import AuthError

if TYPE_CHECKING:
    from realtime.auth.principal import Principal

logger = logging.getLogger("realtime.auth")

UserKey = tuple[str, str]  # (tenant, sub)
LIMIT = 100_000


class Revocations:
    def __init__(
        self, seconds: int, *, limit: int = LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.seconds = seconds
        self._limit = limit
        self._clock = clock
        # (tenant, sub) -> (at, until): in the order they were recorded, so nearly in the
        # order they end (every node records them for the same REALTIME_REVOKE_SECONDS)
        self._users: dict[UserKey, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._users)

    def now(self) -> int:
        """This second: the `at` of a revocation recorded now."""
        return int(self._clock())

    def revoke(self, tenant: str, sub: str, at: int, seconds: float | None = None) -> None:
        """Refuse the user's tokens issued at or before `at` for `seconds` from now
        (default: REALTIME_REVOKE_SECONDS). Recording one again keeps the later of each."""
        key = (tenant, sub)
        until = self._clock() + (self.seconds if seconds is None else seconds)
        previous = self._users.pop(key, None)
        if previous is not None:
            at, until = max(at, previous[0]), max(until, previous[1])
        if until <= self._clock():
            return
        self._users[key] = (at, until)
        self._trim()

    def check(self, principal: Principal) -> None:
        """AuthError `token revoked` for a token its user's revocation covers."""
        revoked = self._users.get((principal.tenant_id, principal.sub))
        if revoked is None:
            return
        at, until = revoked
        if self._clock() >= until:
            del self._users[(principal.tenant_id, principal.sub)]
            return
        iat = principal.raw_claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or iat <= at:
            raise AuthError("token revoked")

    def _trim(self) -> None:
        now = self._clock()
        while self._users:
            key, (_, until) = next(iter(self._users.items()))
            if until > now and len(self._users) <= self._limit:
                return
            del self._users[key]
            if until > now:
                logger.warning("revocations: over %d users, the oldest dropped", self._limit)

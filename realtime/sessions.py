"""Who is connected: each user's sockets on this node and, with REDIS_URL, on the fleet.

Built on it:

- the cap on concurrent sockets per user (REALTIME_MAX_SOCKETS_PER_USER). A socket is
  admitted once authenticated and before anything is sent on it; the one over the cap
  (the newest) is closed with 4409 and the user's other sockets stay;
- `sessions.list`: a tenant's sockets, each with its sub, node, connected_at, remote
  address and path (never a token);
- `sessions.disconnect`: every socket of one user, on every node, closed with 4410, and
  the user's tokens issued until then refused for REALTIME_REVOKE_SECONDS (4401 `token
  revoked`, REST 401) on every node: each node keeps a copy of the revocations in force
  (`revocations`, realtime.auth.revoked), which the token verifier reads.

A user is (tenant, sub): the same sub in another tenant is another user.

On the embedded default the node is the fleet: `Sessions` counts in this process. With
REDIS_URL, `RedisSessions` keeps every socket as an entry in Redis that its node
refreshes every REALTIME_PRESENCE_TTL / 3 seconds, as presence does: the sockets of a
node that died stop counting once their entries expire (the TTL), never forever.

Redis down or hung (no answer within REALTIME_REDIS_TIMEOUT): for FALLBACK_SECONDS the
cap is checked against this node's own sockets of the user (logged, counted in
`realtime_socket_cap_fallbacks_total`), so an outage never refuses every socket; the
sockets admitted meanwhile are written to Redis by the next refresh. `sessions.list`
answers UNAVAILABLE then, and so does `sessions.disconnect` (nothing closed; a publication
sent and unanswered: TIMEOUT, outcome unknown).

A disconnect travels over Redis pub/sub (`PUBLISH` on the database's channel, so two
deployments on one Redis server but different databases never close each other's
sockets): every node listening closes its own sockets of the user and tells the asking
node how many on that node's own channel. The asker waits at most REPLY_WAIT for as many
answers as PUBLISH says nodes heard it, and answers what it knows: the sockets closed on
the nodes that answered, how many nodes heard it, how many did not answer in time.

The revocation goes with it: in one transaction the asker writes the user's key
`realtime:revoked:{<tenant>}:<sub>` (expiring after REALTIME_REVOKE_SECONDS) and
publishes the order, which carries its time; every node hearing it records it before it
closes the user's sockets. A node loads every such key (SCAN) whenever it subscribes:
at start, so a node started later refuses those tokens too, and after its subscription
failed, for the orders it missed meanwhile. A first load that does not finish within
twice REALTIME_REDIS_TIMEOUT (a hung Redis, a very large database to SCAN): the node
starts with the revocations it hears from then on, logs it, and loads the rest once Redis
answers. (With Redis down the node does not start at all: its job broker needs Redis.)
No handshake waits on Redis for this: the verifier reads the node's copy only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import orjson

from realtime.audit import node_name
from realtime.auth.revoked import Revocations
from realtime.exceptions import (
    AuthError,
    CloseError,
    Disconnected,
    OutcomeUnknown,
    TooManySockets,
    Unavailable,
)

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from realtime.auth.principal import Principal
    from realtime.metrics import Metrics
    from realtime.settings import Settings

logger = logging.getLogger("realtime.sessions")

UserKey = tuple[str, str]  # (tenant, sub)
FALLBACK_SECONDS = 5.0  # after a Redis failure, the node's own counts for this long
LOG_EVERY = 60.0  # seconds between two warnings of the same kind
BATCH = 500  # sockets per refresh pipeline
GONE_MAX = 10_000  # removals kept for a retry while Redis is down (the rest expire)
KEY_PREFIX = "realtime:sessions:"
REVOKED_PREFIX = "realtime:revoked:"
SCAN_COUNT = 1000  # keys per SCAN step when a node loads the revocations
REPLY_WAIT = 1.0  # seconds a disconnect waits for the other nodes' counts
RETRY_AFTER = 2
CLOSE_REASON_BYTES = 123  # what a WebSocket close frame can carry

# KEYS: the user's zset (member -> expiry), the tenant's zset, the tenant's hash (member ->
# info). ARGV: now, expiry, cap (0: none), member, info, key ttl. 1: admitted, 0: over cap.
ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[6])
end
return 1
"""


# KEYS: the tenant's zset and hash, and (for one sub) the user's zset. ARGV: now, the sub
# or ''. Drops the tenant's expired entries (a dead node's), answers the live ones' info.
LIST = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for i = 1, #stale, 1000 do
  redis.call('HDEL', KEYS[2], unpack(stale, i, math.min(i + 999, #stale)))
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local live
if ARGV[2] ~= '' then
  live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')
else
  live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
end
local found = {}
for i = 1, #live, 1000 do
  local infos = redis.call('HMGET', KEYS[2], unpack(live, i, math.min(i + 999, #live)))
  for _, info in ipairs(infos) do
    if info then
      table.insert(found, info)
    end
  end
end
return found
"""


def close_reason(reason: str) -> str:
    """The 4410 close's reason: what the administrator gave, within a close frame."""
    text = f"disconnected by an administrator: {reason}" if reason else ""
    encoded = text.encode()[:CLOSE_REASON_BYTES]
    return encoded.decode(errors="ignore")  # a character cut in two is dropped


class Socket(Protocol):
    """What the registry needs of a socket (realtime.socket.connection.Connection)."""

    id: str
    websocket: WebSocket

    def close(self, error: CloseError) -> None: ...


@dataclass(slots=True)
class _Entry:
    socket: Socket
    key: UserKey
    info: dict[str, Any]
    principal: Principal


def _tag(tenant: str) -> str:
    # a Redis Cluster hash tag per tenant: a user's and a tenant's keys share one slot,
    # so one script reads and writes them; the length makes any tenant id unambiguous
    return f"{{{len(tenant)}.{tenant}}}"


def user_keys(key: UserKey) -> list[str]:
    """The Redis keys of a user: its zset, its tenant's zset and hash."""
    tenant, sub = key
    tag = _tag(tenant)
    return [f"{KEY_PREFIX}{tag}:u:{sub}", f"{KEY_PREFIX}{tag}:z", f"{KEY_PREFIX}{tag}:h"]


def revoked_key(key: UserKey) -> str:
    """The Redis key of a user's revocation."""
    tenant, sub = key
    return f"{REVOKED_PREFIX}{_tag(tenant)}:{sub}"


def _connected_at() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Sessions:
    """In process (the embedded default): this node is the whole fleet."""

    def __init__(self, cap: int, metrics: Metrics, revocations: Revocations) -> None:
        self.cap = cap
        self.revocations = revocations
        self.node = node_name()
        self._metrics = metrics
        self._users: dict[UserKey, dict[str, _Entry]] = {}
        self._keys: dict[str, UserKey] = {}  # socket id -> its user (a refresh keeps it)

    async def start(self) -> None:
        """Nothing runs in the background in process."""

    async def stop(self, bound: float) -> None:
        """Nothing to stop in process."""

    # -- admission -------------------------------------------------------------------

    async def admit(self, socket: Socket, principal: Principal) -> None:
        """Count an authenticated socket of its user; TooManySockets (4409) if the user
        holds the cap already. A socket admitted is `release`d when it ends."""
        entry = self._entry(socket, principal)
        await self._admit(entry)
        self._users.setdefault(entry.key, {})[socket.id] = entry
        self._keys[socket.id] = entry.key
        # the user may have been cut off while this socket was being admitted (its token
        # verified before): now a disconnect either finds it or has been recorded
        self.revocations.check(principal)

    async def _admit(self, entry: _Entry) -> None:
        self._check_local(entry)

    def _check_local(self, entry: _Entry) -> None:
        if self.cap and len(self._users.get(entry.key, ())) >= self.cap:
            self._refuse()

    def _refuse(self) -> NoReturn:
        self._metrics.socket_cap_rejections.inc()
        raise TooManySockets()

    def _entry(self, socket: Socket, principal: Principal) -> _Entry:
        client = socket.websocket.client
        info = {
            "id": socket.id,
            "sub": principal.sub,
            "node": self.node,
            "connected_at": _connected_at(),
            "remote": client.host if client else None,
            "path": socket.websocket.url.path,
        }
        return _Entry(socket, (principal.tenant_id, principal.sub), info, principal)

    def release(self, socket: Socket) -> None:
        """The socket ended: its user's slot is free (at once here)."""
        self._forget(socket)

    def _forget(self, socket: Socket) -> _Entry | None:
        key = self._keys.pop(socket.id, None)
        sockets = self._users.get(key) if key is not None else None
        if key is None or sockets is None:
            return None
        entry = sockets.pop(socket.id, None)
        if not sockets:
            del self._users[key]
        return entry

    # -- sessions.list, sessions.disconnect --------------------------------------------

    async def listing(self, tenant: str, sub: str | None) -> list[dict[str, Any]]:
        """The sockets of `tenant` (of its user `sub` only, when given), in no order."""
        return [
            entry.info
            for (owner, user), sockets in self._users.items()
            if owner == tenant and sub in (None, user)
            for entry in sockets.values()
        ]

    async def disconnect(self, tenant: str, sub: str, reason: str) -> dict[str, Any]:
        """Refuse the user's tokens issued until now, close every socket of the user with
        4410; what was done (see RedisSessions)."""
        at = self.revocations.now()
        self.revocations.revoke(tenant, sub, at)
        closed = self.close_local(tenant, sub, reason)
        return self._disconnected(sub, at, closed, nodes=1, unanswered=0)

    def _disconnected(
        self, sub: str, at: int, closed: int, *, nodes: int, unanswered: int
    ) -> dict[str, Any]:
        return {
            "sub": sub,
            "closed": closed,
            "nodes": nodes,
            "unanswered_nodes": unanswered,
            "revoked_at": at,
            "revoked_until": at + self.revocations.seconds,
        }

    def close_revoked(self, tenant: str, sub: str) -> int:
        """Close (4410) this node's sockets of the user whose tokens its revocation now
        covers: an order this node did not hear (its pub/sub was down) and learnt from
        Redis later. Sockets opened since with a fresh token stay; how many closed."""
        closed = 0
        for entry in list(self._users.get((tenant, sub), {}).values()):
            try:
                self.revocations.check(entry.principal)
            except AuthError:
                entry.socket.close(Disconnected())
                closed += 1
        if closed:
            logger.info("closed %d revoked socket(s) of %s (tenant %s)", closed, sub, tenant)
        return closed

    def close_local(self, tenant: str, sub: str, reason: str) -> int:
        """Close this node's sockets of the user with 4410; how many."""
        entries = list(self._users.get((tenant, sub), {}).values())
        for entry in entries:
            entry.socket.close(Disconnected(close_reason(reason) or None))
        if entries:
            logger.info("disconnected %d socket(s) of %s (tenant %s)", len(entries), sub, tenant)
        return len(entries)


class RedisSessions(Sessions):
    """The fleet's sockets in Redis (REDIS_URL): see the module's docstring."""

    def __init__(
        self,
        cap: int,
        metrics: Metrics,
        revocations: Revocations,
        redis: Any,
        *,
        ttl: float,
        timeout: float,
    ):
        # (the embedded default never loads redis)
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        super().__init__(cap, metrics, revocations)
        self._redis = redis
        self._ttl = ttl
        self._key_ttl = math.ceil(ttl * 4)
        self._timeout = timeout
        self._errors = (RedisError, OSError, TimeoutError)
        self._id = secrets.token_hex(8)  # this node's entries: <id>:<socket id>
        self._admit_script = redis.register_script(ADMIT)
        self._list_script = redis.register_script(LIST)
        self._timeouts: tuple[type[BaseException], ...] = (TimeoutError, RedisTimeoutError)
        # pub/sub channels are not per database: the database is in their names
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        self._channel = f"{KEY_PREFIX}{db}"
        self._inbox = f"{self._channel}:{self._id}"  # other nodes' answers to this one
        self._asked: dict[str, _Answers] = {}
        self._gone: list[_Entry] = []
        self._added: list[_Entry] = []  # admitted without a cap: written in the background
        self._wake = asyncio.Event()
        self._down_until = 0.0
        self._logged: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loaded = asyncio.Event()  # the revocations in Redis loaded once

    async def start(self) -> None:
        self._spawn(self._keep())
        self._spawn(self._listen())
        await self._first_load()

    async def _first_load(self) -> None:
        """Wait (a bounded time) for the revocations in Redis, so that a node starting
        refuses the tokens the fleet refuses before it serves anyone."""
        bound = self._timeout * 2
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                await self._loaded.wait()
        if not self._loaded.is_set():
            logger.warning(
                "sessions: the revocations were not loaded from Redis within %.1f s: "
                "serving with those heard from now on until Redis answers",
                bound,
            )

    async def stop(self, bound: float) -> None:
        """Cancel the background tasks; wait for them at most `bound` seconds (a call
        cancelled while Redis is frozen may hang in redis-py's disconnect). The sockets
        that ended last are removed from Redis first, within the bound: left there, they
        would count against their users' cap until their entries expire."""
        if self._gone:
            with contextlib.suppress(_Down, TimeoutError, *self._errors):
                async with asyncio.timeout(bound):
                    await self._remove()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=bound)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _member(self, entry: _Entry) -> str:
        return f"{self._id}:{entry.socket.id}"

    async def _call(self, coro: Awaitable[Any]) -> Any:
        """One Redis call within REALTIME_REDIS_TIMEOUT; `_Down` when it failed."""
        try:
            async with asyncio.timeout(self._timeout):
                return await coro
        except self._errors as error:
            raise _Down(type(error).__name__, isinstance(error, self._timeouts)) from None

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY) >= LOG_EVERY:
            self._logged[kind] = now
            logger.warning(message, *args)

    # -- admission -------------------------------------------------------------------

    async def _admit(self, entry: _Entry) -> None:
        if not self.cap:
            # nothing to check: the socket opens at once, its entry is written meanwhile
            self._added.append(entry)
            self._wake.set()
            return
        if time.monotonic() < self._down_until:
            self._admit_locally(entry)
            return
        now = time.time()
        args = [now, now + self._ttl, self.cap, self._member(entry)]
        script = self._admit_script(
            keys=user_keys(entry.key), args=[*args, orjson.dumps(entry.info), self._key_ttl]
        )
        try:
            admitted = await self._call(script)
        except _Down as error:
            self._down_until = time.monotonic() + FALLBACK_SECONDS
            self._warn(
                "admit",
                "socket cap: Redis failed (%s); this node's own counts for %.0f s",
                error,
                FALLBACK_SECONDS,
            )
            self._admit_locally(entry)
            return
        except asyncio.CancelledError:
            self._removed_later(entry)  # the script may have run: its entry goes
            raise
        if not int(admitted):
            self._refuse()

    def _admit_locally(self, entry: _Entry) -> None:
        self._check_local(entry)
        self._metrics.socket_cap_fallbacks.inc()

    def release(self, socket: Socket) -> None:
        """The socket ended: its entry is removed from Redis in the background (a
        moment later; if Redis is down, when it is back, or by its expiry)."""
        entry = self._forget(socket)
        if entry is not None:
            self._removed_later(entry)

    def _removed_later(self, entry: _Entry) -> None:
        if len(self._gone) < GONE_MAX:
            self._gone.append(entry)
        self._wake.set()

    # -- sessions.list ------------------------------------------------------------------

    async def listing(self, tenant: str, sub: str | None) -> list[dict[str, Any]]:
        _, tenant_set, table = user_keys((tenant, ""))
        keys = [tenant_set, table]
        if sub is not None:
            keys.append(user_keys((tenant, sub))[0])
        try:
            found = await self._call(self._list_script(keys=keys, args=[time.time(), sub or ""]))
        except _Down:
            raise Unavailable(RETRY_AFTER, "the sessions registry (Redis) is unavailable") from None
        return [orjson.loads(info) for info in found]

    # -- sessions.disconnect: over pub/sub -----------------------------------------------

    async def disconnect(self, tenant: str, sub: str, reason: str) -> dict[str, Any]:
        """Every node that hears it (this one too) closes its sockets of the user and
        answers how many; `closed` counts those of the nodes that answered in time."""
        request = secrets.token_hex(8)
        answers = self._asked[request] = _Answers()
        at = self.revocations.now()
        order = {"op": "disconnect", "id": request, "from": self._id, "at": at}
        order |= {"seconds": self.revocations.seconds, "tenant": tenant, "sub": sub}
        try:
            heard = await self._call(self._revoke(order, orjson.dumps({**order, "reason": reason})))
            self.revocations.revoke(tenant, sub, at)  # this node's own, before it hears it
            await answers.wait(heard, REPLY_WAIT)
        except _Down as error:
            if error.timed_out:
                # the order may have gone out: this node refuses the tokens as the others may
                self.revocations.revoke(tenant, sub, at)
                raise OutcomeUnknown(
                    "Redis did not answer in time: some sockets may have been closed"
                ) from None
            raise Unavailable(RETRY_AFTER, "Redis is unavailable: no socket was closed") from None
        finally:
            del self._asked[request]
        unanswered = max(0, heard - answers.nodes)
        return self._disconnected(sub, at, answers.closed, nodes=heard, unanswered=unanswered)

    async def _revoke(self, order: dict[str, Any], message: bytes) -> int:
        """Write the user's revocation and publish the order, both or neither; how many
        nodes heard it."""
        key = revoked_key((order["tenant"], order["sub"]))
        record = orjson.dumps({k: order[k] for k in ("tenant", "sub", "at")})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, record, ex=self.revocations.seconds)
            pipe.publish(self._channel, message)
            _, heard = await pipe.execute()
        return int(heard)

    async def _listen(self) -> None:
        """This node's subscription to the disconnects and to the answers it is owed,
        subscribed again (with a backoff) whenever its connection fails."""
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await self._call(pubsub.subscribe(self._channel, self._inbox))
                await self._load()  # after subscribing: no order falls between the two
                self._loaded.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._heard_safely(message["data"])
            except (_Down, *self._errors) as error:
                self._warn("listen", "sessions: pub/sub failed (%r); subscribing again", error)
            finally:
                with contextlib.suppress(*self._errors):
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _heard_safely(self, data: bytes) -> None:
        """A message this node cannot handle (a bug, a stranger's publish) is logged and
        the listening goes on: ending it would leave the node deaf to every disconnect."""
        try:
            self._heard(data)
        except Exception:
            logger.exception("sessions: a message on %s could not be handled", self._channel)

    def _heard(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            if not isinstance(message, dict):
                raise TypeError("not an object")
            op = _field(message, "op", str)
            request = _field(message, "id", str)
            if op == "closed":
                answers = self._asked.get(request)
                if answers is not None:
                    answers.add(_field(message, "closed", int))
                return
            if op == "disconnect":
                tenant, sub = _field(message, "tenant", str), _field(message, "sub", str)
                self._heard_revocation(message, tenant, sub)
                closed = self.close_local(tenant, sub, _field(message, "reason", str))
                self._spawn(self._answer(_field(message, "from", str), request, closed))
        except (ValueError, TypeError):
            logger.warning("sessions: an unusable message on %s ignored", self._channel)

    def _heard_revocation(self, message: dict[str, Any], tenant: str, sub: str) -> None:
        at, seconds = message.get("at"), message.get("seconds")
        if isinstance(at, int) and isinstance(seconds, int):
            self.revocations.revoke(tenant, sub, at, seconds)
        else:  # an order without its time (a node of an earlier version): from now
            self.revocations.revoke(tenant, sub, self.revocations.now())

    async def _load(self) -> None:
        """Every revocation in Redis into this node's copy, a SCAN step at a time."""
        cursor = 0
        while True:
            step = self._redis.scan(cursor, match=f"{REVOKED_PREFIX}*", count=SCAN_COUNT)
            cursor, keys = await self._call(step)
            if keys:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.pttl(key)
                    found = await self._call(pipe.execute())
                for record, pttl in zip(found[::2], found[1::2], strict=True):
                    self._loaded_revocation(record, pttl)
            if not int(cursor):
                return

    def _loaded_revocation(self, record: bytes | None, pttl: int) -> None:
        if record is None or pttl == -2:
            return  # expired between the SCAN and the GET
        try:
            found = orjson.loads(record)
            if not isinstance(found, dict):
                raise TypeError("not an object")
            tenant, sub = _field(found, "tenant", str), _field(found, "sub", str)
            at = _field(found, "at", int)
        except (ValueError, TypeError):
            logger.warning("sessions: an unusable revocation in Redis ignored")
            return
        # what is left of it (a key without expiry, none of ours: the full time)
        self.revocations.revoke(tenant, sub, at, pttl / 1000 if pttl > 0 else None)
        self.close_revoked(tenant, sub)  # the order itself may have passed this node by

    async def _answer(self, asker: str, request: str, closed: int) -> None:
        message = orjson.dumps({"op": "closed", "id": request, "closed": closed})
        try:
            await self._call(self._redis.publish(f"{self._channel}:{asker}", message))
        except _Down as error:  # the asker counts this node as not answered
            self._warn("answer", "sessions: a disconnect's count not sent (%s)", error)

    # -- the writer: removals as they come, every socket's entry every TTL/3 -----------

    async def _keep(self) -> None:
        """One task writes entries (refresh) and removes them, in turn, so that a refresh
        read before a socket ended cannot write its entry back after the removal."""
        loop = asyncio.get_running_loop()
        period = self._ttl / 3
        refresh_at = loop.time() + period
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, refresh_at - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._added:
                    added, self._added = self._added, []
                    await self._write(added)  # lost on failure: the refresh writes it
                if self._gone:
                    await self._remove()
                if loop.time() >= refresh_at:
                    refresh_at = loop.time() + period
                    await self._write([e for user in self._users.values() for e in user.values()])
            except _Down as error:
                self._warn("keep", "sessions: Redis failed (%s); retrying", error)
            except Exception:
                # a bug must not stop the refresh (the node's users would expire)
                logger.exception("sessions: refresh failed")

    async def _remove(self) -> None:
        gone, self._gone = self._gone, []
        try:
            for start in range(0, len(gone), BATCH):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for entry in gone[start : start + BATCH]:
                        user, tenant, table = user_keys(entry.key)
                        member = self._member(entry)
                        pipe.zrem(user, member)
                        pipe.zrem(tenant, member)
                        pipe.hdel(table, member)
                    await self._call(pipe.execute())
        except _Down:
            # kept for the next turn (a release or the refresh wakes it), within GONE_MAX
            self._gone = (gone + self._gone)[:GONE_MAX]
            raise

    async def _write(self, entries: list[_Entry]) -> None:
        """Write (or refresh) the entries of these sockets."""
        expiry = time.time() + self._ttl
        for start in range(0, len(entries), BATCH):
            keys: set[str] = set()
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in entries[start : start + BATCH]:
                    user, tenant, table = user_keys(entry.key)
                    member = self._member(entry)
                    pipe.zadd(user, {member: expiry})
                    pipe.zadd(tenant, {member: expiry})
                    pipe.hset(table, member, orjson.dumps(entry.info))
                    keys.update((user, tenant, table))
                for key in keys:
                    pipe.expire(key, self._key_ttl)
                await self._call(pipe.execute())


class _Down(Exception):
    """A Redis call failed or did not answer in time (`timed_out`: it may have run)."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


class _Answers:
    """The other nodes' answers to one disconnect."""

    def __init__(self) -> None:
        self.nodes = self.closed = 0
        self.expected: int | None = None
        self._all = asyncio.Event()

    def add(self, closed: int) -> None:
        self.nodes += 1
        self.closed += closed
        if self.expected is not None and self.nodes >= self.expected:
            self._all.set()

    async def wait(self, expected: int, limit: float) -> None:
        self.expected = expected
        if self.nodes >= expected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self._all.wait()


def _field(message: dict[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind):
        raise ValueError(f"{name} is not a {kind.__name__}")
    return value


@contextlib.asynccontextmanager
async def open_sessions(settings: Settings, metrics: Metrics) -> AsyncIterator[Sessions]:
    """The node's registry: in process, or in Redis with REDIS_URL (on a client of its
    own, closed at the end within REALTIME_REDIS_TIMEOUT)."""
    cap = settings.max_sockets_per_user
    revocations = Revocations(settings.revoke_seconds)
    if settings.redis_url is None:
        yield Sessions(cap, metrics, revocations)
        return
    from redis.asyncio import Redis

    timeout = settings.redis_timeout
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    sessions = RedisSessions(
        cap, metrics, revocations, redis, ttl=settings.presence_ttl, timeout=timeout
    )
    await sessions.start()
    try:
        yield sessions
    finally:
        await sessions.stop(timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await redis.aclose()

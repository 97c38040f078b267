"""The resources of one app, built in its lifespan and closed in `finally`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from databases import Database
from taskiq import AsyncBroker

from realtime.audit import AuditLog, AuditStore, open_audit
from realtime.auth.dev import DEV_ISSUER, DevIssuer, load_dev_users
from realtime.auth.keys import JWKSKeys, KeySource, OIDCProvider
from realtime.auth.login import DevLogin, KeycloakLogin, Login
from realtime.auth.verifier import TokenVerifier
from realtime.bus import Backend, from_url
from realtime.bus.hub import Hub
from realtime.db import open_database
from realtime.dispatch import Dispatcher
from realtime.exceptions import GoingAway
from realtime.jobs import Jobs, Task, TaskServices, broker_from_url, builtin_tasks, stop_bodies
from realtime.jobs.metrics import measure, sample_queue
from realtime.memory import Trimmer
from realtime.metrics import Metrics
from realtime.migrate import check_schema, embedded_at_head, upgrade
from realtime.packages import Catalog
from realtime.sessions import Sessions, open_sessions
from realtime.settings import Settings
from realtime.topics import TopicPermissions

# how long the drain waits for this node's last publications (job.done) to reach its
# own subscribers before it closes their sockets
DELIVERY_BOUND = 2.0
# seconds a stopped in-process job's taskiq runner may take to end before it is cancelled
STOP_BOUND = 5.0

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("realtime.lifespan")


@dataclass
class DrainState:
    """How far this process's drain is. `started`: `/ready` answers 503 and a socket
    opened from then on is told `server.draining` at once; `closing`: the window is over,
    such a socket is closed with 1001 as soon as it is told."""

    started: bool = False
    closing: bool = False


@dataclass(frozen=True)
class Services:
    settings: Settings
    catalog: Catalog
    dispatcher: Dispatcher
    verifier: TokenVerifier
    login: Login
    metrics: Metrics
    dev_issuer: DevIssuer | None
    database: Database
    hub: Hub
    topics: TopicPermissions
    jobs: Jobs
    # the node's audit log (realtime.audit): rows of audited packages, written in batches
    audit: AuditLog
    # each user's sockets, on this node and (REDIS_URL) the fleet: the per-user cap
    sessions: Sessions
    # the open sockets of this process, for the drain at shutdown
    connections: set[Any] = field(default_factory=set)
    drain_state: DrainState = field(default_factory=DrainState)

    async def drain(self, grace: float) -> None:
        """Tell every socket `server.draining`, give clients `grace` seconds to move, then
        close the rest with 1001 (PROTOCOL.md 2.4)."""
        self.drain_state.started = True
        for connection in list(self.connections):
            connection.draining()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # in-process jobs end now, while their watchers are still connected: each one's
        # job.done must be delivered (queued ahead of the 1001) before the sockets close
        await stop_running_jobs(self.jobs)
        await self.hub.settle(DELIVERY_BOUND)
        self.drain_state.closing = True
        for connection in list(self.connections):
            connection.close(GoingAway())
        for _ in range(40):  # the closes go out through each socket's writer
            if not self.connections:
                break
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def build_services(
    settings: Settings,
    dispatcher: Dispatcher,
    topics: TopicPermissions,
    tasks: Sequence[Task],
    *,
    bus: Backend | None = None,
    broker: AsyncBroker | None = None,
    audit_store: AuditStore | None = None,
) -> AsyncIterator[Services]:
    """Everything the app holds while it serves; `bus` and `broker` (injected) replace
    the backends the settings name. The audit log is written to `audit_store` until the
    end, and what it holds then is written before the database closes."""
    if settings.database_url is None and not embedded_at_head(settings):
        # the embedded default keeps its own SQLite file at the code's schema (Alembic is
        # loaded only when there is something to apply)
        await anyio.to_thread.run_sync(upgrade, settings)
    async with (
        open_database(settings) as database,
        http_client(settings) as http,
        open_hub(settings, bus, dispatcher.metrics) as hub,
        open_audit(settings, database, audit_store, dispatcher.metrics) as audit,
        open_sessions(settings, dispatcher.metrics) as sessions,
    ):
        await check_schema(settings, database)
        keys, login, dev = _auth_backends(settings, http)
        verifier = TokenVerifier(
            keys,
            issuer=settings.keycloak_issuer or DEV_ISSUER,
            audience=settings.keycloak_audience,
            audience_in_azp=settings.audience_in_azp,
            algorithms=settings.jwt_algorithms,
            leeway=settings.jwt_leeway,
            client_id=settings.keycloak_client_id,
            tenant_claim=settings.tenant_claim,
            cache_size=settings.token_cache,
            revocations=sessions.revocations,
        )
        broker = broker or broker_from_url(settings.bus_url, settings)
        jobs = Jobs(broker, [*builtin_tasks(settings), *tasks])
        services = Services(
            settings,
            dispatcher.catalog,
            dispatcher,
            verifier,
            login,
            dispatcher.metrics,
            dev,
            database,
            hub,
            topics,
            jobs,
            audit,
            sessions,
        )
        # the socket counts (frames, bytes) are read from the live sockets at a scrape
        services.metrics.traffic.live = lambda: services.connections
        async with (
            running_broker(jobs, services),
            watching_sends(services),
            shared_limits(settings, dispatcher),
        ):
            yield services


@contextlib.asynccontextmanager
async def http_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient | None]:
    """The client of the issuer's endpoints (Keycloak); none for the development issuer,
    whose process then never imports httpx (~5 MiB: docs/benchmarks.md, Idle memory)."""
    if settings.keycloak_issuer is None:
        yield None
        return
    import httpx

    async with httpx.AsyncClient(timeout=settings.http_timeout) as http:
        yield http


def _auth_backends(
    settings: Settings, http: httpx.AsyncClient | None
) -> tuple[KeySource, Login, DevIssuer | None]:
    if settings.keycloak_issuer is None or http is None:
        dev = dev_issuer(settings)
        users = load_dev_users(settings.dev_users_file)
        return dev, DevLogin(dev, users, settings.dev_token_ttl), dev
    provider = OIDCProvider(http, settings.keycloak_issuer)
    keys = JWKSKeys(
        provider,
        http,
        jwks_url=settings.keycloak_jwks_url,
        min_refresh=settings.jwks_min_refresh,
        max_age=settings.jwks_max_age,
    )
    login = KeycloakLogin(
        provider,
        http,
        client_id=settings.keycloak_client_id,
        client_secret=settings.keycloak_client_secret,
        token_url=settings.keycloak_token_url,
    )
    return keys, login, None


@contextlib.asynccontextmanager
async def shared_limits(settings: Settings, dispatcher: Dispatcher) -> AsyncIterator[None]:
    """With REDIS_URL, the rate limits are kept in Redis (realtime.ratelimit), on a client
    of their own: a lease is one short script, never behind the bus's reads."""
    if settings.redis_url is None:
        yield
        return
    from redis.asyncio import Redis

    timeout = settings.redis_timeout
    redis = Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    dispatcher.share_limits(redis, timeout)
    try:
        yield
    finally:
        dispatcher.unshare_limits()
        await bounded(redis.aclose(), timeout, "the rate limits' Redis client")


@contextlib.asynccontextmanager
async def watching_sends(services: Services) -> AsyncIterator[None]:
    """One sweeper per process enforces every socket's send deadline (1013 for a peer
    that does not read): cheaper than arming and cancelling a timer per write. It also
    gives memory back once a crowd of sockets has left (realtime.memory)."""
    period = min(1.0, services.settings.send_timeout / 4)
    trimmer = Trimmer(delay=services.settings.close_timeout + 1)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            _check_stalls(services.connections, now)
            trimmer.observe(len(services.connections), now)
            services.metrics.fold()  # --workers: what the other processes' scrapes see

    sweeper = asyncio.create_task(sweep())
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        services.metrics.fold()


def _check_stalls(connections: set[Any], now: float) -> None:
    # a function of its own: the loop variable (the last socket) goes when it returns; in
    # the sweeper's loop it held a closed socket, and all it held, until the next sweep
    for connection in list(connections):
        connection.check_stall(now)


@contextlib.asynccontextmanager
async def running_broker(jobs: Jobs, services: Services) -> AsyncIterator[None]:
    # what tasks receive through TaskiqState; only the in-process broker runs them here
    jobs.broker.state.services = TaskServices(
        services.settings,
        services.database,
        services.hub,
        redelivered=False,
        metrics=services.metrics,
    )
    measure(jobs.broker, services.metrics)
    await jobs.broker.startup()
    sampling = asyncio.create_task(sample_queue(jobs.broker, services.metrics))
    try:
        yield
    finally:
        sampling.cancel()
        await asyncio.wait({sampling}, timeout=services.settings.redis_timeout)
        await stop_running_jobs(jobs)
        await bounded(jobs.broker.shutdown(), services.settings.redis_timeout, "the job broker")


async def stop_running_jobs(jobs: Jobs) -> None:
    """In-process jobs die with the server: stop them while the database and the bus are
    still open, so each can record and announce how it ended. Their bodies are stopped
    (`stoppable`), and taskiq's runners end by themselves; a runner still going after
    STOP_BOUND (a task without a stoppable body) is cancelled."""
    services = getattr(jobs.broker.state, "services", None)
    if isinstance(services, TaskServices):
        stop_bodies(services)
    running = list(getattr(jobs.broker, "_running_tasks", ()))  # InMemoryBroker's own set
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=STOP_BOUND)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


@contextlib.asynccontextmanager
async def open_hub(
    settings: Settings, backend: Backend | None = None, metrics: Metrics | None = None
) -> AsyncIterator[Hub]:
    """The node's hub on `backend`, else on the bus `settings.bus_url` names, counting
    into `metrics`; the hub owns the backend and closes it."""
    backend = backend or from_url(settings.bus_url, settings)
    hub = Hub(backend, settings.presence_ttl, metrics.bus if metrics else None)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop(settings.redis_timeout)
        await bounded(backend.close(), settings.redis_timeout, "the bus")


async def bounded(closing: Coroutine[Any, Any, None], seconds: float, what: str) -> None:
    """A close that waits on a hung dependency (a frozen Redis does not read what we
    write, so closing its connections waits for ever) must not hang the shutdown: it is
    given `seconds`, then left behind with a warning."""
    try:
        async with asyncio.timeout(seconds):
            await closing
    except TimeoutError:
        logger.warning("%s did not close within %.1f s at shutdown: left behind", what, seconds)


def dev_issuer(settings: Settings) -> DevIssuer:
    return DevIssuer.load_or_create(
        settings.dev_key_file,
        audience=settings.keycloak_audience,
        client_id=settings.keycloak_client_id,
    )

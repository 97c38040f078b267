"""Settings from the environment (and a `.env` file), as one immutable value object.

With nothing set you get the embedded default: SQLite, in-process bus and broker, and
the development issuer. Every field names its variable; a bad value stops start-up with
one line naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dotenv import dotenv_values

from realtime.bus import scheme
from realtime.exceptions import ConfigError

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _str(value: str) -> str:
    return value


def _optional(value: str) -> str | None:
    return value or None


DATABASE_SCHEMES = ("postgresql://", "postgresql+asyncpg://", "postgres://", "sqlite:///")


def _database_url(value: str) -> str | None:
    if not value:
        return None
    if not value.startswith(DATABASE_SCHEMES):
        raise ValueError(f"expected a URL starting with one of {', '.join(DATABASE_SCHEMES)}")
    return value


LOG_FORMATS = ("text", "json")


def _log_format(value: str) -> str:
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def _bus_url(value: str) -> str | None:
    if not value:
        return None
    try:
        scheme(value)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return value


def _int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return number


def _float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _origins(value: str) -> tuple[str, ...] | None:
    origins = tuple(origin.rstrip("/") for origin in _csv(value))
    return origins or None


def _algorithms(value: str) -> tuple[str, ...]:
    algorithms = _csv(value)
    weak = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
    if weak or not algorithms:
        raise ValueError(f"only asymmetric algorithms are allowed, not {weak or 'none'}")
    return algorithms


AUDIT_BATCH_MAX = 1000  # rows per INSERT: 9 parameters each, within every engine's limit


def _audit_batch(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= AUDIT_BATCH_MAX:
        raise ValueError(f"expected 1 to {AUDIT_BATCH_MAX}, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = _int(value)
    if number < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return number


def _env(name: str, parse: Callable[[str], Any], default: Any) -> Any:
    return field(default=default, metadata={"env": name, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Every knob of the server. Build it with `Settings.from_env()`."""

    database_url: str | None = _env("DATABASE_URL", _database_url, None)
    embedded_database: str = _env("REALTIME_EMBEDDED_DB", _str, ".realtime/realtime.db")
    migrations_dir: str = _env("REALTIME_MIGRATIONS", _str, "migrations")
    db_timeout: float = _env("REALTIME_DB_TIMEOUT", _float, 5.0)
    db_pool_size: int = _env("REALTIME_DB_POOL_SIZE", _int, 10)
    # the bus and the job queue (redis://, rediss://, unix://); unset: both in process
    redis_url: str | None = _env("REDIS_URL", _bus_url, None)
    # bounds every Redis call of the bus (connect, pool wait, command): a frozen Redis is
    # an outage within this, not a handler TIMEOUT
    redis_timeout: float = _env("REALTIME_REDIS_TIMEOUT", _float, 2.0)
    stream_retention: int = _env("REALTIME_STREAM_RETENTION", _int, 1000)
    stream_ttl: int = _env("REALTIME_STREAM_TTL", _int, 86400)
    presence_ttl: float = _env("REALTIME_PRESENCE_TTL", _float, 30.0)
    max_jobs: int = _env("REALTIME_MAX_JOBS", _int, 30)
    drain_seconds: float = _env("REALTIME_DRAIN_SECONDS", _float, 5.0)
    # with REDIS_URL: a job whose worker stopped refreshing its claim this long is taken
    # over by another worker, which looks for such jobs every reclaim interval
    job_claim_timeout: float = _env("REALTIME_JOB_CLAIM_TIMEOUT", _float, 20.0)
    job_reclaim_interval: float = _env("REALTIME_JOB_RECLAIM_INTERVAL", _float, 2.0)
    job_max_attempts: int = _env("REALTIME_JOB_MAX_ATTEMPTS", _int, 3)
    # with REDIS_URL: every worker looks this often for jobs PENDING (at least this long) in
    # the database whose queue entry vanished (Redis restarted empty), and queues them again
    job_sweep_interval: float = _env("REALTIME_JOB_SWEEP_INTERVAL", _float, 30.0)
    job_result_ttl: int = _env("REALTIME_JOB_RESULT_TTL", _int, 86400)
    job_queue: str = _env("REALTIME_JOB_QUEUE", _str, "realtime:jobs")
    worker_grace: float = _env("REALTIME_WORKER_GRACE", _float, 10.0)
    # `realtime worker` serves its own /metrics on this port (0: not at all)
    worker_metrics_port: int = _env("REALTIME_WORKER_METRICS_PORT", _int, 0)
    heartbeat_seconds: int = _env("REALTIME_HEARTBEAT_SECONDS", _int, 60)
    keycloak_issuer: str | None = _env("KEYCLOAK_ISSUER", _optional, None)
    keycloak_audience: str = _env("KEYCLOAK_AUDIENCE", _str, "realtime")
    keycloak_client_id: str = _env("KEYCLOAK_CLIENT_ID", _str, "realtime")
    keycloak_client_secret: str | None = _env("KEYCLOAK_CLIENT_SECRET", _optional, None)
    keycloak_jwks_url: str | None = _env("KEYCLOAK_JWKS_URL", _optional, None)
    keycloak_token_url: str | None = _env("KEYCLOAK_TOKEN_URL", _optional, None)
    allowed_origins: tuple[str, ...] | None = _env("ALLOWED_ORIGINS", _origins, None)
    audience_in_azp: bool = _env("REALTIME_AUDIENCE_IN_AZP", _bool, False)
    tenant_claim: str = _env("REALTIME_TENANT_CLAIM", _str, "tenant_id")
    jwt_algorithms: tuple[str, ...] = _env(
        "REALTIME_JWT_ALGORITHMS", _algorithms, ("RS256", "RS384", "RS512", "PS256", "ES256")
    )
    jwt_leeway: int = _env("REALTIME_JWT_LEEWAY", _int, 30)
    jwks_min_refresh: float = _env("REALTIME_JWKS_MIN_REFRESH", _float, 10.0)
    jwks_max_age: float = _env("REALTIME_JWKS_MAX_AGE", _float, 300.0)
    http_timeout: float = _env("REALTIME_HTTP_TIMEOUT", _float, 5.0)
    dev_key_file: str = _env("REALTIME_DEV_KEY_FILE", _str, ".realtime/dev-key.json")
    dev_users_file: str = _env("REALTIME_DEV_USERS_FILE", _str, "dev-users.toml")
    dev_token_ttl: int = _env("REALTIME_DEV_TOKEN_TTL", _int, 3600)
    permissions_file: str = _env("REALTIME_PERMISSIONS", _str, "permissions.toml")
    handlers: tuple[str, ...] = _env("REALTIME_HANDLERS", _csv, ("handlers",))
    host: str = _env("REALTIME_HOST", _str, "127.0.0.1")
    port: int = _env("REALTIME_PORT", _int, 8000)
    log_level: str = _env("REALTIME_LOG_LEVEL", _str, "info")
    # json: one object per line (time, level, logger, message, and req_id, sub, package,
    # status, duration_ms, node where known), for a log shipper
    log_format: str = _env("REALTIME_LOG_FORMAT", _log_format, "text")
    expiry_warning: float = _env("REALTIME_EXPIRY_WARNING", _float, 30.0)
    auth_timeout: float = _env("REALTIME_AUTH_TIMEOUT", _float, 10.0)
    max_frame_bytes: int = _env("REALTIME_MAX_FRAME_BYTES", _int, 64 * 1024)
    # REST request bodies (and POST /auth/login): larger ones are answered 413 unread
    max_body_bytes: int = _env("REALTIME_MAX_BODY_BYTES", _int, 1024 * 1024)
    max_inflight: int = _env("REALTIME_MAX_INFLIGHT", _int, 64)
    send_queue: int = _env("REALTIME_SEND_QUEUE", _int, 256)
    send_timeout: float = _env("REALTIME_SEND_TIMEOUT", _float, 5.0)
    close_timeout: float = _env("REALTIME_CLOSE_TIMEOUT", _float, 10.0)
    # off by default: deflate costs CPU per socket and defeats "serialize once" fan-out
    ws_compression: bool = _env("REALTIME_WS_COMPRESSION", _bool, False)
    # the app tunes the process's garbage collector while it serves (realtime.app's
    # _tuned_collector); off for a process whose collector is someone else's to set
    gc_tuning: bool = _env("REALTIME_GC_TUNING", _bool, True)
    handler_timeout: float = _env("REALTIME_HANDLER_TIMEOUT", _float, 10.0)
    # verified tokens remembered (by hash, until they expire); 0 checks every one
    token_cache: int = _env("REALTIME_TOKEN_CACHE", _int, 10_000)
    # threads for plain `def` handlers (those without inline=True), per process
    handler_threads: int = _env("REALTIME_HANDLER_THREADS", _int, 16)
    rate_limit: float = _env("REALTIME_RATE_LIMIT", _float, 100.0)
    rate_burst: int = _env("REALTIME_RATE_BURST", _int, 200)
    max_invalid_frames: int = _env("REALTIME_MAX_INVALID_FRAMES", _int, 10)
    max_rate_limited: int = _env("REALTIME_MAX_RATE_LIMITED", _int, 50)
    # a request head (HTTP, or a WebSocket upgrade) must be complete within this
    header_timeout: float = _env("REALTIME_HEADER_TIMEOUT", _float, 10.0)
    # connections held at once by `realtime serve` (0: the descriptor limit less a reserve)
    max_connections: int = _env("REALTIME_MAX_CONNECTIONS", _int, 0)
    # concurrent sockets per user (tenant + sub), counted fleet-wide with REDIS_URL; 0: no cap
    max_sockets_per_user: int = _env("REALTIME_MAX_SOCKETS_PER_USER", _int, 0)
    # seconds `sessions.disconnect` refuses the user's tokens issued until then: longer
    # than the identity provider's access tokens live, or an old token outlives it
    revoke_seconds: int = _env("REALTIME_REVOKE_SECONDS", _positive_int, 86400)
    # the audit log (realtime.audit): rows held in memory at most, written every
    # `audit_flush` seconds or as soon as `audit_batch` are waiting
    audit_queue: int = _env("REALTIME_AUDIT_QUEUE", _int, 10_000)
    audit_batch: int = _env("REALTIME_AUDIT_BATCH", _audit_batch, 500)
    audit_flush: float = _env("REALTIME_AUDIT_FLUSH", _float, 0.2)

    @property
    def database(self) -> str:
        """The database URL in use: DATABASE_URL, or the embedded SQLite file."""
        return self.database_url or f"sqlite:///{self.embedded_database}"

    @property
    def bus_url(self) -> str:
        """The URL of the bus and of the job queue (`bus.from_url`,
        `jobs.broker_from_url`): REDIS_URL, or memory:// (both in this process)."""
        return self.redis_url or "memory://"

    @property
    def dev_issuer_enabled(self) -> bool:
        """The development issuer runs only when no real issuer is configured."""
        return self.keycloak_issuer is None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | None = ".env"
    ) -> Settings:
        """Read the process environment over the `.env` file (the environment wins)."""
        values: dict[str, str] = {}
        if env_file and os.path.exists(env_file):
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        kwargs: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            name = spec.metadata["env"]
            if name in values:
                kwargs[spec.name] = _parse(name, spec.metadata["parse"], values[name])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None

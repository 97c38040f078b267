"""The suite's own services: REALTIME_TEST_REDIS chooses the Redis database, and the TCP
proxies of the outage tests forward to the hosts and ports the variables name (issue 11,
item 14), not to a fixed 6379 or 5432."""

from __future__ import annotations

import asyncpg
import pytest
import redis

from tests.conftest import PG_SERVER, redis_url
from tests.proxy import address_of, running_proxy

pytestmark = pytest.mark.anyio


def test_the_redis_variable_chooses_the_database() -> None:
    assert redis_url("redis://10.1.2.3:6390/10") == "redis://10.1.2.3:6390/10"
    assert (
        redis_url("redis://:secret@redis.internal:6390") == "redis://:secret@redis.internal:6390/9"
    )
    assert redis_url("redis://127.0.0.1:6379/") == "redis://127.0.0.1:6379/9"


def test_proxies_forward_to_the_host_and_port_a_url_names() -> None:
    assert address_of("postgresql://postgres:pw@db.internal:5433/realtime") == ("db.internal", 5433)
    assert address_of("postgresql+asyncpg://postgres@db.internal/realtime") == ("db.internal", 5432)
    assert address_of("redis://cache.internal:6390/10") == ("cache.internal", 6390)
    assert address_of("redis://cache.internal") == ("cache.internal", 6379)
    with running_proxy("postgresql://postgres:pw@db.internal:5433/realtime?sslmode=off") as proxy:
        through = proxy.url("postgresql://postgres:pw@db.internal:5433/realtime?sslmode=off")
        assert (proxy.target_host, proxy.target_port) == ("db.internal", 5433)
    assert through == f"postgresql://postgres:pw@127.0.0.1:{proxy.port}/realtime?sslmode=off"


def test_a_proxy_reaches_the_test_redis_database() -> None:
    """Through the proxy, the same server and database as the direct URL (a key written
    directly is read back through it)."""
    direct = redis.Redis.from_url(redis_url(), socket_connect_timeout=3)
    with running_proxy(redis_url()) as proxy:
        through = redis.Redis.from_url(proxy.url(redis_url()), socket_connect_timeout=3)
        try:
            direct.set("realtime:test:proxy", "reached", ex=60)
            assert through.get("realtime:test:proxy") == b"reached"
        finally:
            direct.delete("realtime:test:proxy")
            through.close()
            direct.close()


async def test_a_proxy_reaches_the_test_postgres_server() -> None:
    direct = f"{PG_SERVER}/test"
    with running_proxy(direct) as proxy:
        connection = await asyncpg.connect(proxy.url(direct), timeout=5)
        try:
            assert await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()

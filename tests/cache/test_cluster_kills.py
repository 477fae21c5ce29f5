"""A Redis Cluster tier whose connections were killed while idle (a Redis restart, an idle
timeout, an operator's CLIENT KILL) loses no write: the next pipeline of writes meets a
dead connection on some node, and what failed there is sent once more, as redis-py does
for a single server's pipeline."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from limpet.cache.redis.backend import RedisCache
from tests.cluster_servers import RedisClusterServers
from tests.redis_servers import named

pytestmark = pytest.mark.cluster


async def killed(cluster: RedisClusterServers, name: str) -> None:
    """Every connection named ``name``, on every node, killed while it sits idle."""
    count = 0
    for port in cluster.ports:
        async with redis.asyncio.Redis(port=port) as admin:
            for found in await admin.client_list():
                if found.get("name") == name:
                    count += bool(await admin.client_kill_filter(_id=found["id"]))
    assert count >= len(cluster.ports)


@pytest.fixture
def name() -> str:
    """The name the cache's connections announce, so the test kills them and them only."""
    return f"limpet-kills-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def cache(
    redis_cluster: RedisClusterServers, cluster_prefix: str, name: str
) -> AsyncIterator[RedisCache]:
    url = named(redis_cluster.cache_url, name)
    async with RedisCache.from_url(
        url, prefix=cluster_prefix, read_timeout=1.0, write_timeout=1.0
    ) as cache:
        yield cache


KEYS = [f"key-{i}" for i in range(60)]  # on every node


async def test_writes_after_every_connection_was_killed_all_land(
    redis_cluster: RedisClusterServers, cache: RedisCache, name: str
) -> None:
    for key in KEYS:
        await cache.set(key, b"first", 60)
    await cache.flush()
    await killed(redis_cluster, name)
    for key in KEYS:
        await cache.set(key, b"second", 60)
    await cache.flush()
    assert cache.failed_writes == 0
    assert [await cache.get(key) for key in KEYS] == [b"second"] * len(KEYS)


async def test_reads_after_every_connection_was_killed_are_served(
    redis_cluster: RedisClusterServers, cache: RedisCache, name: str
) -> None:
    for key in KEYS:
        await cache.set(key, b"stored", 60)
    await cache.flush()
    await killed(redis_cluster, name)
    assert [await cache.get(key) for key in KEYS] == [b"stored"] * len(KEYS)
    assert cache.breaker.state == "closed"

"""A Redis Cluster tier whose connections were killed while idle (a Redis restart, an idle
timeout, an operator's CLIENT KILL) loses no write: the next pipeline of writes meets a
dead connection on some node, and what failed there is sent once more, as redis-py does
for a single server's pipeline."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio

from limpet.cache.redis.backend import RedisCache
from tests.cluster_servers import RedisClusterServers
from tests.redis_servers import named

pytestmark = pytest.mark.cluster


async def kill_named(cluster: RedisClusterServers, name: str) -> int:
    killed = 0
    for port in cluster.ports:
        async with redis.asyncio.Redis(port=port) as admin:
            for found in await admin.client_list():
                if found.get("name") == name:
                    killed += bool(await admin.client_kill_filter(_id=found["id"]))
    return killed


async def test_writes_after_every_connection_was_killed_all_land(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    name = f"limpet-kills-{uuid.uuid4().hex[:12]}"
    url = named(redis_cluster.url.replace("redis://", "redis+cluster://", 1), name)
    keys = [f"key-{i}" for i in range(60)]  # on every node
    async with RedisCache.from_url(
        url, prefix=cluster_prefix, read_timeout=1.0, write_timeout=1.0
    ) as cache:
        for key in keys:
            await cache.set(key, b"first", 60)
        await cache.flush()
        assert await kill_named(redis_cluster, name) >= len(redis_cluster.ports)
        for key in keys:
            await cache.set(key, b"second", 60)
        await cache.flush()
        assert cache.failed_writes == 0
        assert [await cache.get(key) for key in keys] == [b"second"] * len(keys)


async def test_reads_after_every_connection_was_killed_are_served(
    redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    name = f"limpet-kills-{uuid.uuid4().hex[:12]}"
    url = named(redis_cluster.url.replace("redis://", "redis+cluster://", 1), name)
    keys = [f"key-{i}" for i in range(60)]
    async with RedisCache.from_url(
        url, prefix=cluster_prefix, read_timeout=1.0, write_timeout=1.0
    ) as cache:
        for key in keys:
            await cache.set(key, b"stored", 60)
        await cache.flush()
        assert await kill_named(redis_cluster, name) >= len(redis_cluster.ports)
        assert [await cache.get(key) for key in keys] == [b"stored"] * len(keys)
        assert cache.breaker.state == "closed"

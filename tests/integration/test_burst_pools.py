"""A burst of distinct misses through a shared tier whose client has a fixed number of
connections (Memcached's emcache pools, a Redis Cluster client), with the default
budgets: the tier stays up, stores every answer, and serves the same burst again.

Before, five hundred concurrent misses took five hundred leases at once, most of which
waited for one of 32 emcache connections inside their 100 ms budget: the breaker took a
healthy local Memcached for down, nothing was stored, and the same burst again went
upstream whole. Real servers and the FakeGateway over loopback; counts, never times.
"""

from __future__ import annotations

import asyncio

import pytest

from limpet import CacheStatus, Client, Endpoint, MemcachedCache, RedisCache, RetryConfig
from limpet.cache.tiered import TieredCache
from limpet.testing import FakeGateway
from tests.cluster_servers import RedisClusterServers
from tests.integration.chat import ask

BURST = 500


async def burst_twice(gateway: FakeGateway, first: TieredCache, second: TieredCache) -> None:
    """``BURST`` distinct misses through a Client on ``first``, then the same questions
    through another on ``second`` (the same tier, no memory of its own)."""
    endpoint = Endpoint("a", gateway.base_url("a"))
    questions = [ask(f"burst question {i}") for i in range(BURST)]
    async with Client(endpoints=[endpoint], cache=first, retry=RetryConfig()) as writer:
        answers = await asyncio.gather(*(writer.complete(**q) for q in questions))
        stats = writer.stats
    # Closing the writer sent what it had queued: the other Client reads the tier itself.
    assert {a.cache for a in answers} == {CacheStatus.MISS}
    assert (stats.cache_errors, stats.failed_cache_writes, stats.dropped_cache_writes) == (0, 0, 0)
    assert stats.breaker_state == "closed"
    async with Client(endpoints=[endpoint], cache=second) as reader:
        again = await asyncio.gather(*(reader.complete(**q) for q in questions))
        assert reader.stats.cache_errors == 0
    assert {a.cache for a in again} == {CacheStatus.HIT}
    assert gateway.endpoint("a").calls == BURST


@pytest.mark.memcached
async def test_a_burst_of_misses_never_takes_a_healthy_memcached_for_down(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    memcached = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix)
    second = TieredCache(MemcachedCache.from_url(memcached_url, prefix=memcached_prefix))
    await burst_twice(gateway, TieredCache(memcached), second)
    assert memcached._connector.slots.held == 0  # every command gave its place back


async def test_a_burst_of_misses_never_takes_a_healthy_redis_cluster_for_down(
    gateway: FakeGateway, redis_cluster: RedisClusterServers, cluster_prefix: str
) -> None:
    url = redis_cluster.cache_url
    first = TieredCache(RedisCache.from_url(url, prefix=cluster_prefix))
    second = TieredCache(RedisCache.from_url(url, prefix=cluster_prefix))
    await burst_twice(gateway, first, second)

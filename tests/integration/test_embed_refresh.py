"""``embed(cache="refresh")`` against a shared tier that cannot take its write: the vector
it replaced is never served again, here or in another process. Real servers; breakers
on a fake clock."""

from __future__ import annotations

import pytest

from limpet import Client, Endpoint, MemcachedCache, MemoryCache, RedisCache, TieredCache
from limpet.cache.breaker import CircuitBreaker
from limpet.testing import FakeGateway
from tests.cache.test_owed_deletes import trip
from tests.fakes import COOLDOWN, FakeClock

MODEL = "openai/text-embedding-3-small"


async def refresh_while_the_breaker_is_open(
    gateway: FakeGateway,
    breaker: CircuitBreaker,
    clock: FakeClock,
    tier: RedisCache | MemcachedCache,
    elsewhere: RedisCache | MemcachedCache,
) -> None:
    """Store "a" and "b" through ``tier``, refresh "a" while its breaker is open (the
    new vector cannot be written there), and read both from ``elsewhere`` (the same
    server, another process) once ``tier`` takes commands again: "a" must be a miss."""
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with (
        Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), tier)) as here,
        Client(endpoints=[endpoint], cache=elsewhere) as other,
    ):
        assert (await here.embed(model=MODEL, input=["a", "b"])).misses == 2
        await tier.flush()
        trip(breaker)
        assert (await here.embed(model=MODEL, input=["a"], cache="refresh")).misses == 1
        clock.advance(COOLDOWN)
        await tier.get("other")  # the probe: the tier takes commands again
        await tier.flush()
        after = await other.embed(model=MODEL, input=["a", "b"])
        assert (after.hits, after.misses) == (1, 1)  # never the vector "a"'s refresh replaced
    assert gateway.embeddings.inputs == 4


@pytest.mark.redis
async def test_a_refresh_while_redis_breaker_is_open_leaves_no_older_vector(
    redis_url: str,
    redis_prefix: str,
    breaker: CircuitBreaker,
    clock: FakeClock,
    gateway: FakeGateway,
) -> None:
    tier = RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker)
    elsewhere = RedisCache.from_url(redis_url, prefix=redis_prefix)
    await refresh_while_the_breaker_is_open(gateway, breaker, clock, tier, elsewhere)


@pytest.mark.memcached
async def test_a_refresh_while_memcached_breaker_is_open_leaves_no_older_vector(
    memcached_url: str,
    memcached_prefix: str,
    breaker: CircuitBreaker,
    clock: FakeClock,
    gateway: FakeGateway,
) -> None:
    tier = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, breaker=breaker)
    elsewhere = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix)
    await refresh_while_the_breaker_is_open(gateway, breaker, clock, tier, elsewhere)

"""Which failures of a remote tier say the command certainly did not take effect
(``CacheRejectedError``: never sent, or refused by the server) and which may have let it
land (a plain ``CacheUnavailableError``: down, or an answer too late). The flights trust
the difference: a lease whose taking may have landed is released, one that cannot have
is not (a release would only wait on a store that is down)."""

from __future__ import annotations

import emcache
import pytest
import redis.asyncio

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.memcached.backend import MemcachedCache
from limpet.cache.redis.backend import RedisCache
from limpet.errors import CacheRejectedError, CacheUnavailableError
from tests.redis_servers import RedisProxy, free_port


def opened(breaker: CircuitBreaker) -> CircuitBreaker:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    assert breaker.state == "open"
    return breaker


@pytest.mark.redis
async def test_redis_says_what_did_not_take_effect(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis, breaker: CircuitBreaker
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker) as cache:
        key = cache.redis_key("not a number")
        await raw.set(key, b"text")
        with pytest.raises(CacheRejectedError, match="refused"):  # Redis said no
            await cache.run("INCR", cache.write_timeout, lambda: cache.redis.incr(key))
        opened(breaker)
        with pytest.raises(CacheRejectedError, match="circuit breaker open"):
            await cache.run("INCR", cache.write_timeout, lambda: cache.redis.incr(key))
    with pytest.raises(CacheRejectedError, match="closed"):
        await cache.run("INCR", cache.write_timeout, lambda: cache.redis.incr(key))
    assert await raw.get(key) == b"text"


@pytest.mark.redis
async def test_a_redis_command_answered_too_late_may_have_landed(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as cache,
    ):
        key = cache.redis_key("counter")
        await cache.delete("warm the pool")
        proxy.stall_replies()
        with pytest.raises(CacheUnavailableError, match="timed out") as caught:
            await cache.run("INCR", cache.write_timeout, lambda: cache.redis.incr(key))
        assert not isinstance(caught.value, CacheRejectedError)
        assert await raw.get(key) == b"1"  # it did


@pytest.mark.memcached
async def test_memcached_says_what_did_not_take_effect(
    memcached_url: str, memcached_prefix: str, breaker: CircuitBreaker
) -> None:
    async with MemcachedCache.from_url(
        memcached_url, prefix=memcached_prefix, breaker=breaker
    ) as cache:
        key = cache.entry_key("taken")
        await cache.run("set", cache.write_timeout, lambda c: c.set(key, b"first"))

        async def add(client: emcache.Client) -> None:
            await client.add(key, b"second")

        with pytest.raises(CacheRejectedError, match="refused"):  # NOT_STORED: it is taken
            await cache.run("add", cache.write_timeout, add)
        opened(breaker)
        with pytest.raises(CacheRejectedError, match="circuit breaker open"):
            await cache.run("add", cache.write_timeout, add)
    with pytest.raises(CacheRejectedError, match="closed"):
        await cache.run("add", cache.write_timeout, add)


@pytest.mark.memcached
async def test_a_memcached_that_is_down_may_have_taken_anything(
    breaker: CircuitBreaker,
) -> None:
    # Nothing listens: the command was surely not applied, but a client cannot tell a
    # refused connection from one that broke after sending, so it is not "rejected".
    async with MemcachedCache.from_url(
        f"memcached://127.0.0.1:{free_port()}", breaker=breaker
    ) as cache:
        with pytest.raises(CacheUnavailableError) as caught:
            await cache.run("get", cache.read_timeout, lambda c: c.get(b"k"))
        assert not isinstance(caught.value, CacheRejectedError)

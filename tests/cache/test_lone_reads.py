"""A Redis-tier read alone goes on one connection the cache keeps: each reader still gets
its own key's value, and a read abandoned half-way never leaves its reply for the next."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.redis.backend import RedisCache
from limpet.cache.redis.lone import packed_get
from limpet.errors import CacheUnavailableError
from tests.redis_servers import RedisProxy, RedisServer


async def test_concurrent_readers_each_get_their_own_keys_value(
    redis_url: str, redis_prefix: str
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        for i in range(200):
            await cache.set(f"k{i}", f"v{i}".encode(), 60)
        await cache.flush()
        for _ in range(3):  # a lone read, then reads batched behind it, in each round
            keys = [f"k{i}" for i in range(200)] + ["absent"]
            values = await asyncio.gather(*(cache.get(key) for key in keys))
            assert values == [f"v{i}".encode() for i in range(200)] + [None]
        assert cache._reads.batches > 0


async def test_a_reader_cancelled_mid_read_leaves_no_reply_for_the_next(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix, read_timeout=5.0) as cache,
    ):
        await raw.set(cache.redis_key("first"), b"first's value")
        await raw.set(cache.redis_key("second"), b"second's value")
        assert await cache.get("second") == b"second's value"  # connected
        proxy.stall_replies()
        reader = asyncio.create_task(cache.get("first"))
        await proxy.reply_held.wait()  # the GET of "first" reached Redis; no reply yet
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        proxy.resume()
        # The reply to "first" is never read as the answer to "second".
        for _ in range(3):
            assert await cache.get("second") == b"second's value"
        assert cache.breaker_state == "closed"


async def test_a_lone_read_past_its_budget_is_a_fault_and_the_next_read_answers(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix, read_timeout=0.05) as cache,
    ):
        await raw.set(cache.redis_key("slow"), b"slow")
        await raw.set(cache.redis_key("fast"), b"fast")
        assert await cache.get("fast") == b"fast"
        proxy.delay = 0.5
        with pytest.raises(CacheUnavailableError, match="timed out"):
            await cache.get("slow")
        proxy.delay = 0.0
        assert await cache.get("fast") == b"fast"


async def test_a_killed_redis_opens_the_breaker_and_a_restarted_one_answers_again(
    redis_server: RedisServer,
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=0.0)
    async with RedisCache(url=redis_server.url, breaker=breaker) as cache:
        await cache.set("k", b"v", 60)
        await cache.flush()
        assert await cache.get("k") == b"v"
        redis_server.kill()
        for _ in range(3):
            with pytest.raises(CacheUnavailableError):
                await cache.get("k")
        assert breaker.opens == 1
        redis_server.restart()  # empty, same port: the kept connection is dead
        assert await cache.get("k") is None  # the probe answers: reconnected
        assert cache.breaker_state == "closed"


@given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_a_packed_get_is_what_redis_py_sends(key: bytes) -> None:
    connection = redis.asyncio.Connection()
    assert packed_get(key) == b"".join(connection.pack_command("GET", key))


@pytest.mark.redis
async def test_a_pool_of_one_keeps_no_connection_for_lone_reads(
    redis_url: str, redis_prefix: str
) -> None:
    # Regression: the lone reads kept the only connection, and every other command waited
    # 20 budgets for one: each write failed, nothing was ever stored.
    async with RedisCache.from_url(
        redis_url, prefix=redis_prefix, max_connections=1, write_timeout=0.5
    ) as cache:
        assert await cache.get("k") is None  # a read alone first
        await cache.set("k", b"v", 60)
        await cache.flush()
        assert (cache.failed_writes, await cache.get("k")) == (0, b"v")

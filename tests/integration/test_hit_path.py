"""The hit paths: an in-process hit never yields to the event loop; a shared-tier hit is
read before the flight and runs none; a miss still enters it and is counted once.

The FakeGateway over loopback, real Redis (``redis_prefix``); counts, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.testing import FakeGateway
from tests.cache.test_tiered_now import AsyncOnlyLocalTier
from tests.integration.chat import ask


def client_of(gateway: FakeGateway, cache: Any, **options: Any) -> Client:
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache, **options)


async def test_an_in_memory_hit_never_yields_to_the_event_loop(gateway: FakeGateway) -> None:
    async with client_of(gateway, MemoryCache()) as client:
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
        ran: list[bool] = []
        asyncio.get_running_loop().call_soon(ran.append, True)
        hit = await client.complete(**ask())
        assert hit.cache is CacheStatus.HIT and not ran
        await asyncio.sleep(0)
        assert ran  # the loop had its turn only once the test yielded


@pytest.mark.parametrize("coalesce", [True, False])
async def test_a_miss_is_counted_once_by_the_tiers(gateway: FakeGateway, coalesce: bool) -> None:
    async with client_of(gateway, MemoryCache(), coalesce=coalesce) as client:
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
        assert (await client.complete(**ask())).cache is CacheStatus.HIT
        assert client.cache is not None
        assert (client.cache.stats.misses, client.cache.stats.hits) == (1, [1])


async def test_a_local_tier_without_a_synchronous_read_still_serves_hits(
    gateway: FakeGateway,
) -> None:
    async with client_of(gateway, TieredCache(AsyncOnlyLocalTier())) as client:
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
        hit = await client.complete(**ask())
        assert hit.cache is CacheStatus.HIT and hit.content
        assert gateway.total_calls == 1


class TaskNames:
    """Records the coroutine of every task the loop creates (a task factory)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
    ) -> asyncio.Task[Any]:
        self.names.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop)


@pytest.mark.redis
async def test_a_redis_tier_hit_with_coalescing_runs_no_flight(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, read_timeout=1.0)
    async with client_of(gateway, rc) as client:
        assert client._chat.coalescing
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
        await rc.flush()
        loop = asyncio.get_running_loop()
        tasks = TaskNames()
        loop.set_task_factory(tasks)
        try:
            hit = await client.complete(**ask())
        finally:
            loop.set_task_factory(None)
        assert hit.cache is CacheStatus.HIT
        assert not [name for name in tasks.names if "_fill" in name]
        assert gateway.total_calls == 1


@pytest.mark.redis
async def test_concurrent_identical_misses_on_a_redis_tier_make_one_upstream_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, read_timeout=1.0)
    async with client_of(gateway, rc) as client:
        answers = await asyncio.gather(*(client.complete(**ask()) for _ in range(50)))
        statuses = sorted(answer.cache for answer in answers)
        assert statuses.count(CacheStatus.MISS) == 1
        assert set(statuses) <= {CacheStatus.MISS, CacheStatus.COALESCED, CacheStatus.HIT}
        assert gateway.total_calls == 1
        assert client.cache is not None and client.cache.stats.misses == 1

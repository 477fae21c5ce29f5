"""One large ``embed()`` on a healthy Redis: every vector stored, no lease left, the
breaker never opened, and another process finds them all.

A call of a thousand inputs used to run two thousand lease scripts at once, queued on
the connection pool, with that queueing charged to Redis's budget: the breaker opened
against a healthy local Redis, vectors were lost and leases left behind. Without
coalescing, its thousand writes overflowed the write queue in one tick and most were
dropped. Every test counts (breaker opens, tier errors, dropped writes, keys in Redis,
inputs sent upstream), never times.
"""

from __future__ import annotations

import pytest
import redis.asyncio

from limpet import Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector

pytestmark = pytest.mark.redis

MODEL = "openai/text-embedding-3-small"
FAST_RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
# Enough to reproduce on two cores: the probe lost vectors from 1,000 inputs on.
BURST = 1_000


def client_on(gateway: FakeGateway, tier: RedisCache, **kwargs: object) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"))
    cache = TieredCache(MemoryCache(), tier)
    return Client(endpoints=[endpoint], cache=cache, retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


def texts(n: int, prefix: str = "chunk") -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


async def keys_under(raw: redis.asyncio.Redis, pattern: str) -> int:
    return len([key async for key in raw.scan_iter(match=pattern, count=1000)])


async def entries_under(raw: redis.asyncio.Redis, prefix: str) -> int:
    """The entries under ``prefix``: neither leases nor generation counters."""
    others = (prefix + "lock:").encode(), (prefix + "gen:").encode()
    keys = [key async for key in raw.scan_iter(match=prefix + "*", count=1000)]
    return sum(1 for key in keys if not key.startswith(others))


async def test_one_call_of_a_thousand_inputs_stores_every_vector_and_leaves_no_lease(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    chunks = texts(BURST)
    tier = RedisCache.from_url(redis_url, prefix=redis_prefix)
    async with client_on(gateway, tier) as one:
        first = await one.embed(model=MODEL, input=chunks)
        errors = one.cache.stats.errors  # type: ignore[union-attr]
    assert first.misses == BURST
    assert tier.breaker.opens == 0
    assert errors == 0
    assert await keys_under(raw, redis_prefix + "lock:*") == 0
    assert await entries_under(raw, redis_prefix) == BURST
    gateway.embeddings.reset()
    async with client_on(gateway, RedisCache.from_url(redis_url, prefix=redis_prefix)) as two:
        again = await two.embed(model=MODEL, input=chunks)
    assert (again.hits, again.misses) == (BURST, 0)
    assert again.vectors == [fake_vector(MODEL, t) for t in chunks]
    assert gateway.embeddings.inputs == 0

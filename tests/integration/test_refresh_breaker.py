"""``complete(cache="refresh")`` against a shared tier that cannot take its write: the
answer it replaced is never served again, here or in another process."""

from __future__ import annotations

import pytest

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.cache.breaker import CircuitBreaker
from limpet.testing import FakeGateway
from tests.cache.test_owed_deletes import trip
from tests.fakes import COOLDOWN, FakeClock
from tests.integration.chat import ask


@pytest.mark.redis
async def test_a_clients_refresh_while_the_breaker_is_open_leaves_no_older_answer(
    redis_url: str,
    redis_prefix: str,
    breaker: CircuitBreaker,
    clock: FakeClock,
    gateway: FakeGateway,
) -> None:
    """``complete(cache="refresh")`` while the Redis tier's breaker is open: the new
    answer cannot be written there, and the one it replaced must not be served to
    another process once Redis is back."""
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker)
    endpoint = Endpoint("a", gateway.base_url("a"))
    elsewhere = RedisCache.from_url(redis_url, prefix=redis_prefix)
    async with (
        Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), rc)) as here,
        Client(endpoints=[endpoint], cache=elsewhere) as other,
    ):
        assert (await here.complete(**ask("q"))).cache is CacheStatus.MISS
        await rc.flush()
        trip(breaker)
        assert (await here.complete(**ask("q"), cache="refresh")).cache is CacheStatus.MISS
        clock.advance(COOLDOWN)
        await rc.get("other")  # the probe: Redis takes commands again
        await rc.flush()
        assert (await other.complete(**ask("q"))).cache is CacheStatus.MISS
    assert gateway.total_calls == 3

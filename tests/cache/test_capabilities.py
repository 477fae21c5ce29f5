"""Tier capabilities: declared once per backend, read by ``capabilities_of()`` alone, and
asked of ``TieredCache`` everywhere (generations, leases, the Redis tier, breakers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import FrozenInstanceError, fields
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.capabilities import (
    UNDECLARED,
    Capability,
    TierCapabilities,
    capabilities_of,
    lowest_with,
)
from limpet.cache.memcached.backend import MemcachedCache
from limpet.cache.memcached.leases import MemcachedFlightStore
from limpet.cache.memory import MemoryCache
from limpet.cache.redis.backend import RedisCache
from limpet.cache.redis.leases import RedisFlightStore
from limpet.cache.tiered import TieredCache
from limpet.routing.affinity import RedisAffinityStore, affinity_store_for

NAMES: list[Capability] = [field.name for field in fields(TierCapabilities)]  # type: ignore[misc]


class Declared:
    """A tier that only declares (what ``lowest_with`` reads), for the pure properties."""

    def __init__(self, capabilities: TierCapabilities) -> None:
        self.capabilities = capabilities


class Counters:
    """A user's backend that keeps generations, and says so."""

    capabilities: ClassVar[TierCapabilities] = TierCapabilities(shared=True, generations=True)

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}

    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def clear(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def generations(self, names: Sequence[str]) -> list[int]:
        return [self.counters.get(name, 0) for name in names]

    async def bump_generation(self, name: str) -> int:
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]


class Undeclared(Counters):
    """The same backend, with a ``capabilities`` that is not a ``TierCapabilities``."""

    capabilities = "generations"  # type: ignore[assignment]


capabilities_strategy = st.builds(TierCapabilities, **{name: st.booleans() for name in NAMES})


def test_what_a_tier_that_declares_nothing_can_do() -> None:
    assert capabilities_of(object()) == UNDECLARED == TierCapabilities()
    assert not any(getattr(UNDECLARED, name) for name in NAMES)
    assert capabilities_of(Undeclared()) == UNDECLARED


def test_capabilities_are_frozen_and_keyword_only() -> None:
    with pytest.raises(FrozenInstanceError):
        UNDECLARED.local = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        TierCapabilities(True)  # type: ignore[call-arg]


@given(st.lists(capabilities_strategy, max_size=6), st.sampled_from(NAMES))
def test_lowest_with_is_the_last_tier_that_has_it(
    declared: list[TierCapabilities], capability: Capability
) -> None:
    tiers = [Declared(can) for can in declared]
    having = [tier for tier in tiers if getattr(tier.capabilities, capability)]
    assert lowest_with(tiers, capability) is (having[-1] if having else None)


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_local_tiers_are_the_leading_local_ones(local: list[bool]) -> None:
    tiers = [MemoryCache() if is_local else Counters() for is_local in local]
    cache = TieredCache(*tiers)
    leading = next((i for i, is_local in enumerate(local) if not is_local), len(local))
    assert cache.local_tiers == leading
    assert cache.capabilities == tuple(map(capabilities_of, tiers))


def test_a_memory_only_cache_offers_nothing_shared() -> None:
    cache = TieredCache(MemoryCache())
    assert cache.local_tiers == 1
    assert cache.generation_store is None
    assert cache.flight_store is None
    assert cache.redis_tier is None
    assert cache.guarded_tiers == ()
    assert affinity_store_for(cache.tiers) is None


def test_a_users_backend_is_found_by_what_it_declares() -> None:
    lower, upper = Counters(), Counters()
    cache = TieredCache(MemoryCache(), upper, lower)
    assert cache.generation_store is lower
    assert cache.lowest_with("shared") is lower
    assert cache.local_tiers == 1
    assert cache.flight_store is None and cache.redis_tier is None
    assert TieredCache(MemoryCache(), Undeclared()).generation_store is None


async def test_a_redis_tier_serves_every_shared_role() -> None:
    redis = RedisCache.from_url("redis://127.0.0.1:1/0")  # never connected
    cache = TieredCache(MemoryCache(), redis, hmac_key=b"k")
    assert cache.local_tiers == 1
    assert cache.generation_store is redis
    assert cache.redis_tier is redis
    assert cache.guarded_tiers == (redis,)
    assert isinstance(cache.flight_store, RedisFlightStore)
    assert cache.flight_store is redis.flight_store
    assert redis.hmac_key == b"k"
    store = affinity_store_for(cache.tiers)
    assert isinstance(store, RedisAffinityStore)
    await cache.aclose()


async def test_a_memcached_tier_serves_every_shared_role_but_redis_s() -> None:
    memcached = MemcachedCache.from_url("memcached://127.0.0.1:1")  # never connected
    cache = TieredCache(MemoryCache(), memcached, hmac_key=b"k")
    assert cache.generation_store is memcached
    assert isinstance(cache.flight_store, MemcachedFlightStore)
    assert cache.guarded_tiers == (memcached,)
    assert cache.redis_tier is None
    assert affinity_store_for(cache.tiers) is None
    assert memcached.hmac_key == b"k"
    await cache.aclose()


async def test_the_lowest_of_two_shared_tiers_is_the_one_asked() -> None:
    redis = RedisCache.from_url("redis://127.0.0.1:1/0")
    memcached = MemcachedCache.from_url("memcached://127.0.0.1:1")
    cache = TieredCache(MemoryCache(), redis, memcached)
    assert cache.generation_store is memcached
    assert cache.flight_store is memcached.flight_store
    assert cache.redis_tier is redis  # the only one that lends its Redis
    assert cache.guarded_tiers == (redis, memcached)
    await cache.aclose()

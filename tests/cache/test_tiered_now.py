"""TieredCache.get_now: the hit path's read of tier 0 without a coroutine answers as
``get(key, stop=1)`` would, counts what it would count, and leaves every fault it cannot
settle without awaiting (a corrupt entry) to ``get()``."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.base import CacheEntry, EntryCodec
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.errors import CacheCorruptError, CacheUnavailableError
from limpet.models import CacheStatus, Usage
from limpet.pipeline.completions import completion_of
from tests.fakes import FakeClock

ANSWER = {"model": "m", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
FAR = 1e10  # an expiry never reached


def encoded(key: str, content: str = "hi") -> bytes:
    body = {"model": "m", "choices": [{"message": {"role": "assistant", "content": content}}]}
    return EntryCodec().encode(key, CacheEntry(body, Usage(3, 2), 0.5, "a", time.time(), FAR))


class AsyncOnlyLocalTier:
    """A user's in-process tier written before ``get_now``: only the async contract."""

    capabilities = MemoryCache.capabilities

    def __init__(self) -> None:
        self.memory = MemoryCache()

    async def get(self, key: str) -> bytes | None:
        return await self.memory.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.memory.set(key, value, ttl)

    async def delete(self, key: str) -> None:
        await self.memory.delete(key)

    async def clear(self) -> None:
        await self.memory.clear()

    async def aclose(self) -> None:
        await self.memory.aclose()


class FailingNowTier(MemoryCache):
    """A local tier whose synchronous read fails while ``down``."""

    __slots__ = ("down",)

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def get_now(self, key: str) -> bytes | None:
        if self.down:
            raise CacheUnavailableError("down")
        return super().get_now(key)


async def test_a_memory_tier_0_is_read_now_and_a_hit_counts_as_get_counts_it() -> None:
    cache = TieredCache(MemoryCache())
    assert cache.readable_now
    await cache.set_value("k", encoded("k"), 60)
    entry = cache.get_now("k")
    assert entry is not None and entry.body == ANSWER and entry.usage == Usage(3, 2)
    assert cache.stats.hits == [1] and cache.stats.misses == 0


async def test_a_miss_now_is_not_counted_the_tiers_below_are_still_to_be_read() -> None:
    cache = TieredCache(MemoryCache(), MemoryCache())
    await cache.tiers[1].set("k", encoded("k"), 60)
    assert cache.get_now("k") is None
    assert cache.stats.misses == 0
    found = await cache.get("k", start=1)
    assert found is not None and found[1] == 1
    assert cache.get_now("k") is not None  # back-filled by get()
    assert cache.stats.hits == [1, 1]


async def test_reads_share_one_entry_and_each_caller_gets_its_own_usage() -> None:
    cache = TieredCache(MemoryCache())
    await cache.set_value("k", encoded("k"), 60)
    first, second = cache.get_now("k"), cache.get_now("k")
    assert first is not None and first is second  # decoded once, read only
    mine = completion_of(first, CacheStatus.HIT, "k")
    mine.usage.prompt_tokens = 99
    assert completion_of(second, CacheStatus.HIT, "k").usage.prompt_tokens == 3
    assert first.usage.prompt_tokens == 3


def test_no_tier_is_read_now_unless_tier_0_is_local_with_a_synchronous_read() -> None:
    async_only = TieredCache(AsyncOnlyLocalTier())
    assert async_only.local_tiers == 1 and not async_only.readable_now
    assert async_only.get_now("k") is None
    assert async_only.stats.hits == [0] and async_only.stats.misses == 0


async def test_an_expired_entry_is_not_read_now() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryCache(clock=clock))
    await cache.set_value("k", encoded("k"), 5)
    assert cache.get_now("k") is not None
    clock.advance(5)
    assert cache.get_now("k") is None


async def test_a_corrupt_entry_is_left_to_get_which_counts_and_deletes_it_once() -> None:
    cache = TieredCache(MemoryCache())
    await cache.tiers[0].set("k", encoded("elsewhere"), 60)  # bound to another key
    try:
        cache.get_now("k")
    except CacheCorruptError:
        pass
    else:
        raise AssertionError("a misplaced entry must not be read now")
    assert cache.stats.corrupt == 0
    assert await cache.tiers[0].get("k") is not None  # not deleted yet
    assert await cache.get("k") is None
    assert cache.stats.corrupt == 1
    assert await cache.tiers[0].get("k") is None


async def test_a_fault_now_is_counted_and_logged_once_per_outage_like_get() -> None:
    tier = FailingNowTier()
    cache = TieredCache(tier)
    await cache.set_value("k", encoded("k"), 60)
    assert cache.get_now("k") is None and cache.get_now("k") is None
    assert cache.stats.errors == 2
    tier.down = False
    assert cache.get_now("k") is not None
    assert cache.stats.hits == [1]


@settings(max_examples=50, deadline=None)
@given(
    stored=st.dictionaries(st.sampled_from("abcdef"), st.text(max_size=8), max_size=6),
    asked=st.lists(st.sampled_from("abcdefg"), max_size=10),
)
async def test_get_now_answers_what_get_answers(stored: dict[str, str], asked: list[str]) -> None:
    now, later = TieredCache(MemoryCache()), TieredCache(MemoryCache())
    for key, content in stored.items():
        data = encoded(key, content)
        await now.set_value(key, data, 60)
        await later.set_value(key, data, 60)
    for key in asked:
        read_now = now.get_now(key)
        found = await later.get(key, stop=1, count_miss=False)
        assert (read_now is None) == (found is None)
        if read_now is not None and found is not None:
            assert read_now == found[0] and found[1] == 0
    assert now.stats.hits == later.stats.hits


async def test_an_entry_written_by_a_clock_ahead_fills_tier_0_for_no_longer_than_its_ttl() -> None:
    clock = FakeClock()
    below = MemoryCache(clock=clock)  # a shared tier, with the server's own expiry

    def ahead() -> float:
        return clock() + 3600.0  # the writer's wall clock runs an hour ahead

    writer = TieredCache(below, clock=ahead)
    entry = CacheEntry(ANSWER, Usage(3, 2), 0.5, "a", ahead(), ahead() + 2.0)
    assert await writer.set("k", entry) is not None  # for 2 s, by the writer's clock
    top = MemoryCache(clock=clock)
    reader = TieredCache(top, below, clock=clock)
    clock.advance(1.5)
    found = await reader.get("k")
    assert found is not None and found[1] == 1  # served from below
    # Regression: filled into tier 0 for a whole TTL from the read, it outlived the
    # shared tier's copy by as long as the read came after the write.
    assert top.get_now("k") is None
    clock.advance(1.0)
    assert await below.get("k") is None
    assert await reader.get("k") is None  # gone from every tier, not an hour later


async def test_an_entry_written_by_a_clock_in_step_fills_tier_0_for_what_is_left() -> None:
    clock = FakeClock()
    below = MemoryCache(clock=clock)
    writer = TieredCache(below, clock=clock)
    assert await writer.set("k", CacheEntry(ANSWER, Usage(3, 2), 0.5, "a", clock(), clock() + 2.0))
    top = MemoryCache(clock=clock)
    reader = TieredCache(top, below, clock=clock)
    clock.advance(1.5)
    assert await reader.get("k") is not None
    assert top.get_now("k") is not None  # back-filled for the 0.5 s left
    clock.advance(0.6)
    assert top.get_now("k") is None

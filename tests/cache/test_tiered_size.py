"""``TieredCache(max_entry_bytes=...)``: an entry too large to store is counted, not stored."""

from __future__ import annotations

import pytest

from limpet import MemoryCache, RedisCache, TieredCache
from limpet.cache.base import CacheEntry
from limpet.cache.tiered import DEFAULT_MAX_ENTRY_BYTES
from limpet.errors import ConfigurationError
from limpet.models import Usage

NOW = 1_000.0


def entry(text: str) -> CacheEntry:
    body = {"choices": [{"message": {"role": "assistant", "content": text}}]}
    return CacheEntry(body, Usage(), None, "a", NOW, NOW + 60)


async def test_an_entry_above_the_limit_is_not_stored_and_is_counted() -> None:
    memory = MemoryCache()
    cache = TieredCache(memory, max_entry_bytes=1024, clock=lambda: NOW)
    assert await cache.set("big", entry("x" * 2048)) is None
    assert len(memory) == 0
    assert cache.stats.oversized == 1
    assert await cache.get("big") is None


async def test_an_entry_within_the_limit_is_stored() -> None:
    cache = TieredCache(MemoryCache(), max_entry_bytes=1024, clock=lambda: NOW)
    stored = await cache.set("small", entry("x" * 100))
    assert stored is not None and len(stored[0]) <= 1024
    assert await cache.get("small") is not None
    assert cache.stats.oversized == 0


def test_the_default_limit_is_a_few_mib() -> None:
    assert TieredCache(MemoryCache()).max_entry_bytes == DEFAULT_MAX_ENTRY_BYTES == 4 << 20


@pytest.mark.parametrize("limit", [0, -1, 1.5, "4MiB", True, None])
def test_the_limit_is_validated(limit: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^TieredCache\.max_entry_bytes"):
        TieredCache(MemoryCache(), max_entry_bytes=limit)  # type: ignore[arg-type]


async def test_an_entry_that_cannot_be_encoded_is_a_lost_write_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemoryCache()
    cache = TieredCache(memory, clock=lambda: NOW)
    body = {"choices": [{"message": {"role": "assistant", "content": "x"}}]}
    unencodable = CacheEntry(body, Usage(prompt_tokens=2**64), None, "a", NOW, NOW + 60)
    assert await cache.set("k", unencodable) is None
    assert (len(memory), cache.stats.errors, cache.stats.unwritten) == (0, 1, 1)
    assert "cannot be encoded" in caplog.text


@pytest.mark.redis
@pytest.mark.parametrize("replacement", ["oversized", "unencodable"])
async def test_an_answer_not_stored_leaves_no_older_one_in_its_place(
    redis_url: str, redis_prefix: str, replacement: str
) -> None:
    """A refreshed answer that cannot be stored (too large, or no entry can hold it)
    removes the one it replaces from every tier, here and for other processes: the next
    call asks again rather than being served the answer the refresh replaced."""
    shared = RedisCache.from_url(redis_url, prefix=redis_prefix)
    other = RedisCache.from_url(redis_url, prefix=redis_prefix)
    cache = TieredCache(MemoryCache(), shared, max_entry_bytes=1024, clock=lambda: NOW)
    elsewhere = TieredCache(other, clock=lambda: NOW)  # another process's view
    try:
        assert await cache.set("k", entry("old")) is not None
        await cache.flush()
        assert await elsewhere.get("k") is not None
        if replacement == "oversized":
            new = entry("x" * 2048)
        else:
            body = {"choices": [{"message": {"role": "assistant", "content": "new"}}]}
            new = CacheEntry(body, Usage(prompt_tokens=2**64), None, "a", NOW, NOW + 60)
        assert await cache.set("k", new) is None
        await cache.flush()
        assert await cache.get("k") is None
        assert await elsewhere.get("k") is None
    finally:
        await cache.aclose()
        await elsewhere.aclose()

"""A read of a lower tier in flight while its key is written or deleted never back-fills
what it read into the tiers above: a refresh, a ``forget()`` or a ``clear()`` is not
undone in tier 0 by a read that began before it, or while it was half-way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from limpet.cache.base import CacheEntry, EntryCodec
from limpet.cache.key_changes import KeyChanges
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.models import Usage

KEY = "k"
FAR = 1e10  # an expiry never reached


def encoded(content: str, key: str = KEY) -> bytes:
    body = {"model": "m", "choices": [{"message": {"role": "assistant", "content": content}}]}
    return EntryCodec().encode(key, CacheEntry(body, Usage(3, 2), 0.5, "a", time.time(), FAR))


def content(found: tuple[CacheEntry, int] | None) -> str | None:
    return None if found is None else found[0].body["choices"][0]["message"]["content"]


class HeldTier:
    """A shared tier (it declares no capability: read as Redis is, awaited) over a
    ``MemoryCache``, whose next read, once ``hold_read()`` was called, takes the value
    there and then waits for ``release()`` before answering: a GET sent before a write or
    a DEL, answered after it. Its next delete, once ``hold_delete()`` was called, waits
    the same way before deleting: a DEL still on its way."""

    def __init__(self) -> None:
        self.memory = MemoryCache()
        self.in_read = asyncio.Event()
        self.in_delete = asyncio.Event()
        self._released = asyncio.Event()
        self._hold_read = self._hold_delete = False

    def hold_read(self) -> None:
        self._hold_read = True

    def hold_delete(self) -> None:
        self._hold_delete = True

    def release(self) -> None:
        self._released.set()

    async def get(self, key: str) -> bytes | None:
        value = await self.memory.get(key)
        if self._hold_read:
            self._hold_read = False
            self.in_read.set()
            await self._released.wait()
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self.memory.set(key, value, ttl)

    async def delete(self, key: str) -> None:
        if self._hold_delete:
            self._hold_delete = False
            self.in_delete.set()
            await self._released.wait()
        await self.memory.delete(key)

    async def clear(self) -> None:
        await self.memory.clear()

    async def aclose(self) -> None:
        await self.memory.aclose()


async def stored(cache: TieredCache, shared: HeldTier) -> None:
    """The old answer stored in the shared tier alone (by another process, say)."""
    await shared.memory.set(KEY, encoded("old"), 600)
    assert content(await cache.get(KEY, stop=1)) is None


async def read_across(
    cache: TieredCache, shared: HeldTier, change: Callable[[], Awaitable[object]]
) -> str | None:
    """What a read gets that sent its GET to the shared tier before ``change`` and had
    its answer after it."""
    shared.hold_read()
    read = asyncio.ensure_future(cache.get(KEY))
    await shared.in_read.wait()
    await change()
    shared.release()
    return content(await read)


async def test_a_refresh_is_not_undone_by_a_read_in_flight() -> None:
    top, shared = MemoryCache(), HeldTier()
    cache = TieredCache(top, shared)
    await stored(cache, shared)

    # The read began before the new answer was stored: it may give the old one...
    assert await read_across(cache, shared, lambda: cache.set_value(KEY, encoded("new"), 600)) == (
        "old"
    )
    # ...but never put it back over the new one.
    assert content(await cache.get(KEY)) == "new"
    assert content(await cache.get(KEY, start=1)) == "new"


async def test_a_delete_is_not_undone_by_a_read_in_flight() -> None:
    top, shared = MemoryCache(), HeldTier()
    cache = TieredCache(top, shared)
    await stored(cache, shared)

    assert await read_across(cache, shared, lambda: cache.delete(KEY)) == "old"
    assert await top.get(KEY) is None
    assert await cache.get(KEY) is None


async def test_a_clear_is_not_undone_by_a_read_in_flight() -> None:
    top, shared = MemoryCache(), HeldTier()
    cache = TieredCache(top, shared)
    await stored(cache, shared)

    assert await read_across(cache, shared, cache.clear) == "old"
    assert await top.get(KEY) is None


async def test_a_read_begun_half_way_through_a_delete_does_not_back_fill() -> None:
    # Tier 0 deleted, the shared tier's DEL still on its way: a read now finds the old
    # answer there, and must not put it back in tier 0, where the delete already passed.
    top, shared = MemoryCache(), HeldTier()
    cache = TieredCache(top, shared)
    await stored(cache, shared)
    assert content(await cache.get(KEY)) == "old"  # back-filled: tier 0 holds it too

    shared.hold_delete()
    deleting = asyncio.create_task(cache.delete(KEY))
    await shared.in_delete.wait()
    assert content(await cache.get(KEY)) == "old"  # read from the shared tier
    shared.release()
    await deleting

    assert await top.get(KEY) is None
    assert await cache.get(KEY) is None


async def test_a_change_through_another_cache_of_the_same_tier_counts() -> None:
    # Two caches (two Clients) over one MemoryCache and one shared tier: a forget()
    # through one is not undone by a read in flight through the other.
    top, shared = MemoryCache(), HeldTier()
    reader, writer = TieredCache(top, shared), TieredCache(top, shared)
    await stored(reader, shared)

    assert await read_across(reader, shared, lambda: writer.delete(KEY)) == "old"
    assert await top.get(KEY) is None


async def test_a_read_after_the_change_back_fills_again() -> None:
    top, shared = MemoryCache(), HeldTier()
    cache = TieredCache(top, shared)
    await stored(cache, shared)
    await cache.delete(KEY)
    await shared.memory.set(KEY, encoded("later"), 600)  # another process stores anew

    assert content(await cache.get(KEY)) == "later"
    assert content(await cache.get(KEY, stop=1)) == "later"  # back-filled


async def test_a_failed_write_still_ends_its_change() -> None:
    class Broken(HeldTier):
        async def set(self, key: str, value: bytes, ttl: float) -> None:
            raise RuntimeError("a bug in a user's tier")

    top, shared = MemoryCache(), Broken()
    cache = TieredCache(top, shared)
    with pytest.raises(RuntimeError):
        await cache.set_value(KEY, encoded("new"), 600)
    await top.delete(KEY)
    await shared.memory.set(KEY, encoded("later"), 600)

    assert content(await cache.get(KEY)) == "later"
    assert content(await cache.get(KEY, stop=1)) == "later"  # not taken as still changing


def test_key_changes_forgets_old_keys_conservatively() -> None:
    changes = KeyChanges(max_keys=2)
    noted = changes.seq
    for key in ("a", "b", "c"):
        changes.begin(key)
        changes.end(key)
    # "a" is no longer told apart: any read begun before its change takes it for changed.
    assert not changes.unchanged("a", noted)
    assert not changes.unchanged("z", noted)
    assert changes.unchanged("a", changes.seq)
    assert changes.unchanged("z", changes.seq)


def test_key_changes_counts_overlapping_changes_of_one_key() -> None:
    changes = KeyChanges()
    changes.begin("a")
    changes.begin("a")
    changes.end("a")
    assert not changes.unchanged("a", changes.seq)  # one still under way
    changes.end("a")
    assert changes.unchanged("a", changes.seq)

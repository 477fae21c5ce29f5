"""Generation counters on Memcached, for ``invalidate()`` and ``limpet flush``.

A counter is created with ``add`` and bumped with ``incr``, and Memcached may lose it at
any time: evicted by the LRU, gone in a restart or a ``flush_all``. A missing counter is
created above every value it had (``limpet.cache.counter_starts.CounterStarts`` says where
and why); ``add`` is atomic, so processes that race to create it agree on one value (the
losers read the winner's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import emcache

from limpet.cache.counter_starts import CounterStarts
from limpet.errors import CacheUnavailableError

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache

__all__ = ["GenerationCounters"]


class GenerationCounters:
    """The generation counters of one ``MemcachedCache`` (through its ``run()``), and
    the highest value this process saw of each."""

    __slots__ = ("_cache", "_starts")

    def __init__(self, cache: MemcachedCache) -> None:
        self._cache = cache
        self._starts = CounterStarts()

    async def read(self, names: Sequence[str]) -> list[int]:
        """The value of each counter, creating those that are missing."""
        cache = self._cache
        keys = [cache.generation_key(name) for name in names]
        found = await cache.run("get_many", cache.read_timeout, lambda c: c.get_many(keys))
        result = []
        for name, key in zip(names, keys, strict=True):
            item = found.get(key)
            value = _counter(item.value) if item is not None else None
            if value is None:
                value = await self._create(name, key)
            result.append(await self._at_least_seen(name, key, value))
        return result

    async def bump(self, name: str) -> int:
        """Add one to counter ``name`` (created first if missing); the new value."""
        cache, key = self._cache, self._cache.generation_key(name)
        value = await cache.run("incr", cache.write_timeout, lambda c: _incr(c, key))
        if value is None:
            await self._create(name, key)
            value = await cache.run("incr", cache.write_timeout, lambda c: _incr(c, key))
            if value is None:
                raise CacheUnavailableError(f"memcached generation {name!r} vanished while bumped")
        return await self._at_least_seen(name, key, value)

    async def _at_least_seen(self, name: str, key: bytes, value: int) -> int:
        """``value``, read from counter ``name``, or, when it is below a value this
        process saw (``CounterStarts.floor``), what it holds once raised above that (an
        ``incr`` by the difference: atomic, and never below the floor if another process
        raises or bumps it meanwhile)."""
        floor = self._starts.floor(name, value)
        if floor is not None:
            cache = self._cache
            raised = await cache.run(
                "incr", cache.write_timeout, lambda c: _incr(c, key, floor - value)
            )
            value = raised if raised is not None else await self._create(name, key)
        return self._starts.saw(name, value)

    async def _create(self, name: str, key: bytes) -> int:
        """Create a missing counter; its value, or the one another process created first."""
        cache = self._cache
        start = self._starts.start(name)
        if await cache.run("add", cache.write_timeout, lambda c: _add(c, key, b"%d" % start)):
            return start
        item = await cache.run("get", cache.read_timeout, lambda c: c.get(key))
        value = None if item is None else _counter(item.value)
        if value is None:
            raise CacheUnavailableError(f"memcached generation {name!r} is not an integer")
        return value


def _counter(raw: bytes) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


async def _add(client: emcache.Client, key: bytes, value: bytes) -> bool:
    try:
        await client.add(key, value, exptime=0)
    except emcache.NotStoredStorageCommandError:
        return False
    return True


async def _incr(client: emcache.Client, key: bytes, by: int = 1) -> int | None:
    try:
        return await client.increment(key, by)
    except emcache.NotFoundCommandError:
        return None

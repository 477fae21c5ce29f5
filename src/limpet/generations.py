"""Invalidation without SCAN: generation counters hashed into every cache key.

``invalidate(model=m)`` bumps m's generation and ``invalidate()`` the global one; every
key made afterwards differs, so old entries are never read again and age out by TTL.
With a shared store (Redis), generations are read into the process and refreshed in the
background at most every ``refresh_interval`` seconds, so a cache hit stays one GET and
another process's invalidation takes effect here within that interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from limpet.errors import CacheUnavailableError

__all__ = ["DEFAULT_REFRESH_INTERVAL", "GLOBAL", "GenerationStore", "Generations"]

logger = logging.getLogger("limpet.cache")

DEFAULT_REFRESH_INTERVAL = 1.0

#: The name of the generation that covers every model.
GLOBAL = "*"


@runtime_checkable
class GenerationStore(Protocol):
    """Shared generation counters; may raise ``CacheUnavailableError``."""

    async def generations(self, names: Sequence[str]) -> list[int]: ...

    async def bump_generation(self, name: str) -> int: ...


class Generations:
    """The generations this process uses in keys, and how they are bumped and refreshed.

    Args:
        store: the shared counters, or None for a process-local cache.
        refresh_interval: seconds between background refreshes from the store.
        clock: monotonic seconds.
    """

    __slots__ = (
        "_clock",
        "_due",
        "_loading",
        "_refreshing",
        "_store",
        "_values",
        "refresh_interval",
    )

    def __init__(
        self,
        store: GenerationStore | None = None,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._values: dict[str, int] = {}
        self._clock = clock
        self._due = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._loading: dict[str, asyncio.Future[None]] = {}
        self.refresh_interval = refresh_interval

    def scope_now(self, model: str) -> str | None:
        """The key scope for a request to ``model``, or None when ``scope()`` must first
        read the model's generation from the store. Schedules a background refresh when
        one is due, so the cache-hit path never waits on the store."""
        values = self._values
        if self._store is not None:
            if model not in values:
                return None
            if self._clock() >= self._due:
                self._schedule_refresh()
        return f"{values.get(GLOBAL, 0)}.{values.get(model, 0)}"

    async def scope(self, model: str) -> str:
        """The key scope for a request to ``model``.

        The first request for a model in this process reads its generation from the store
        (one round trip, once), so it can never read entries invalidated elsewhere.
        """
        if self._store is not None and model not in self._values:
            # Concurrent first requests share one read, and none uses a guess meanwhile.
            loading = self._loading.get(model)
            if loading is None:
                loading = asyncio.ensure_future(self._load(model))
                self._loading[model] = loading
            await asyncio.shield(loading)
        return f"{self._values.get(GLOBAL, 0)}.{self._values.get(model, 0)}"

    async def _load(self, model: str) -> None:
        try:
            await self.refresh(also=model)
        finally:
            self._values.setdefault(model, 0)
            del self._loading[model]

    async def bump(self, model: str | None = None) -> None:
        """Invalidate ``model``'s entries, or every entry when ``model`` is None."""
        name = GLOBAL if model is None else model
        value = self._values.get(name, 0) + 1
        if self._store is not None:
            try:
                value = max(value, await self._store.bump_generation(name))
            except CacheUnavailableError as exc:
                # Still invalidate here; other processes catch up when the store is back
                # only if it is bumped again, so say so.
                logger.warning("limpet: invalidation of %r is local only: %s", name, exc)
        self._values[name] = value

    async def refresh(self, also: str | None = None) -> None:
        """Read every known generation (and ``also``) from the store now."""
        if self._store is None:
            return
        self._due = self._clock() + self.refresh_interval
        names = sorted({GLOBAL, *self._values, *([also] if also else [])})
        try:
            values = await self._store.generations(names)
        except CacheUnavailableError:
            return
        for name, value in zip(names, values, strict=True):
            # Never go back: a local bump the store missed must stay in force.
            if value > self._values.get(name, 0):
                self._values[name] = value

    async def aclose(self) -> None:
        task, self._refreshing = self._refreshing, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _schedule_refresh(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._due = self._clock() + self.refresh_interval
        self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

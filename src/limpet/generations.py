"""Invalidation without SCAN: generation counters hashed into every cache key.

Three generations go into every key: one for everything in the cache, one for the
client's namespace, and one for the namespace's model. ``invalidate(model=m)`` bumps the
third, ``invalidate()`` the second and ``limpet flush`` (no namespace) the first; every
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

__all__ = [
    "DEFAULT_REFRESH_INTERVAL",
    "EVERYTHING",
    "GenerationStore",
    "Generations",
    "generation_name",
]

logger = logging.getLogger("limpet.cache")

DEFAULT_REFRESH_INTERVAL = 1.0

#: The generation that covers every namespace and model.
EVERYTHING = "*"
# Between a namespace and a model in a generation's name; no namespace or model has it.
_SEPARATOR = "\x1f"


def generation_name(namespace: str | None, model: str | None) -> str:
    """The stored name of a generation: a model's in a namespace, a namespace's (model
    None), or everything's (both None)."""
    if namespace is None and model is None:
        return EVERYTHING
    return (namespace or "") + _SEPARATOR + (EVERYTHING if model is None else model)


@runtime_checkable
class GenerationStore(Protocol):
    """Shared generation counters; may raise ``CacheUnavailableError``."""

    async def generations(self, names: Sequence[str]) -> list[int]: ...

    async def bump_generation(self, name: str) -> int: ...


class Generations:
    """The generations this process uses in keys, and how they are bumped and refreshed.

    Args:
        store: the shared counters, or None for a process-local cache.
        namespace: the client's namespace; its generations are its own.
        refresh_interval: seconds between background refreshes from the store.
        clock: monotonic seconds.
    """

    __slots__ = (
        "_all",
        "_clock",
        "_due",
        "_loading",
        "_names",
        "_namespace",
        "_refreshing",
        "_store",
        "_values",
        "refresh_interval",
    )

    def __init__(
        self,
        store: GenerationStore | None = None,
        *,
        namespace: str = "",
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._all = generation_name(namespace, None)
        self._names: dict[str, str] = {}
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
        name = self._names.get(model) or self._name(model)
        if self._store is not None:
            if name not in values:
                return None
            if self._clock() >= self._due:
                self._schedule_refresh()
        return f"{values.get(EVERYTHING, 0)}.{values.get(self._all, 0)}.{values.get(name, 0)}"

    async def scope(self, model: str) -> str:
        """The key scope for a request to ``model``.

        The first request for a model in this process reads its generation from the store
        (one round trip, once), so it can never read entries invalidated elsewhere.
        """
        name = self._name(model)
        if self._store is not None and name not in self._values:
            # Concurrent first requests share one read, and none uses a guess meanwhile.
            loading = self._loading.get(name)
            if loading is None:
                loading = asyncio.ensure_future(self._load(name))
                self._loading[name] = loading
            await asyncio.shield(loading)
        return self.scope_now(model) or "0.0.0"

    async def _load(self, name: str) -> None:
        try:
            await self.refresh(also=name)
        finally:
            self._values.setdefault(name, 0)
            del self._loading[name]

    async def bump(self, model: str | None = None) -> None:
        """Invalidate ``model``'s entries in this namespace, or every entry in this
        namespace when ``model`` is None (``limpet flush`` reaches every namespace)."""
        name = self._all if model is None else self._name(model)
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
        names = sorted({EVERYTHING, self._all, *self._values, *([also] if also else [])})
        try:
            values = await self._store.generations(names)
        except CacheUnavailableError:
            return
        for name, value in zip(names, values, strict=True):
            # Never go back: a local bump the store missed must stay in force.
            if value > self._values.get(name, 0):
                self._values[name] = value

    def _name(self, model: str) -> str:
        name = self._names.get(model)
        if name is None:
            name = self._names[model] = generation_name(self._namespace, model)
        return name

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

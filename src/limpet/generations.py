"""Invalidation without SCAN: generation counters hashed into every cache key.

Three generations go into every key: one for everything in the cache, one for the
client's namespace, and one for the namespace's model. ``invalidate(model=m)`` bumps the
third, ``invalidate()`` the second and ``limpet flush`` (no namespace) the first; every
key made afterwards differs, so old entries are never read again and age out by TTL.
With a shared store (Redis), generations are read into the process and refreshed in the
background at most every ``refresh_interval`` seconds, so a cache hit stays one GET and
another process's invalidation takes effect here within that interval.

Only the ``max_tracked`` most recently used model generations are kept (and refreshed);
the least recently used is forgotten beyond that. A forgotten model is read from the
store again, like a model never seen, before its next request uses it, so eviction costs
a round trip and never a stale generation. A model whose bump reached only this process
(the store was down) is never forgotten, since the store could not give it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from limpet.errors import CacheUnavailableError

__all__ = [
    "DEFAULT_MAX_TRACKED",
    "DEFAULT_REFRESH_INTERVAL",
    "EVERYTHING",
    "GenerationStore",
    "Generations",
    "generation_name",
]

logger = logging.getLogger("limpet.cache")

DEFAULT_REFRESH_INTERVAL = 1.0
#: Model generations tracked at once: one MGET of this many stays far inside a read budget.
DEFAULT_MAX_TRACKED = 1_000

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
        max_tracked: model generations kept (least recently used forgotten first).
        clock: monotonic seconds.
    """

    __slots__ = (
        "_all",
        "_clock",
        "_due",
        "_loading",
        "_names",
        "_namespace",
        "_pinned",
        "_refreshing",
        "_store",
        "_values",
        "max_tracked",
        "refresh_interval",
    )

    def __init__(
        self,
        store: GenerationStore | None = None,
        *,
        namespace: str = "",
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._all = generation_name(namespace, None)
        self._names: dict[str, str] = {}
        # Least recently used first; the two scope-wide generations are never evicted.
        self._values: OrderedDict[str, int] = OrderedDict()
        # Names bumped here but not in the store: evicting them would lose the bump.
        self._pinned: set[str] = set()
        self.max_tracked = max_tracked
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
            values.move_to_end(name)
            if self._clock() >= self._due:
                self._schedule_refresh()
        return f"{values.get(EVERYTHING, 0)}.{values.get(self._all, 0)}.{values.get(name, 0)}"

    async def scope(self, model: str) -> str:
        """The key scope for a request to ``model``.

        The first request for a model in this process (or the first since it was
        forgotten) reads its generation from the store (one round trip), so it can never
        read entries invalidated elsewhere. When that read fails, the scope says so
        (``?``) and matches no generation's entries; the next request reads again.
        """
        name = self._name(model)
        if self._store is not None and name not in self._values:
            # Concurrent first requests share one read, and none uses a guess meanwhile.
            loading = self._loading.get(name)
            if loading is None:
                loading = asyncio.ensure_future(self._load(name))
                self._loading[name] = loading
            await asyncio.shield(loading)
        values = self._values
        return self.scope_now(model) or f"{values.get(EVERYTHING, 0)}.{values.get(self._all, 0)}.?"

    async def _load(self, name: str) -> None:
        try:
            if self._clock() >= self._due:
                await self.refresh(also=name)  # a refresh was due anyway: one read for both
            else:
                await self._read([EVERYTHING, self._all, name])
        finally:
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
                self._pinned.add(name)
        self._remember(name, value)

    async def refresh(self, also: str | None = None) -> None:
        """Read every known generation (and ``also``) from the store now."""
        if self._store is None:
            return
        self._due = self._clock() + self.refresh_interval
        await self._read(sorted({EVERYTHING, self._all, *self._values, *([also] if also else [])}))

    async def _read(self, names: list[str]) -> None:
        """Read ``names`` from the store into this process (a failure reads nothing)."""
        assert self._store is not None
        try:
            values = await self._store.generations(names)
        except CacheUnavailableError:
            return
        known = self._values
        for name, value in zip(names, values, strict=True):
            mine = known.get(name)
            if mine is None:
                if name in self._loading or name in (EVERYTHING, self._all):
                    self._remember(name, value)
                # Else forgotten while the read was out: it is read again when used.
            elif value > mine:
                known[name] = value
            if name in self._pinned and value >= known.get(name, 0):
                self._pinned.discard(name)  # the store has caught up with the local bump
            # Never go back (value < mine): a local bump the store missed stays in force.

    def _remember(self, name: str, value: int) -> None:
        values = self._values
        values[name] = max(value, values.get(name, 0))
        values.move_to_end(name)
        if len(values) > self.max_tracked + 2:  # the two scope-wide ones do not count
            self._evict()

    def _evict(self) -> None:
        """Forget the least recently used model generation that can be read back."""
        keep = (EVERYTHING, self._all)
        for name in self._values:
            if name not in keep and name not in self._pinned:
                del self._values[name]
                return

    def _name(self, model: str) -> str:
        name = self._names.get(model)
        if name is None:
            if len(self._names) >= self.max_tracked * 2:
                self._names.clear()  # a memo of a pure function: clearing loses nothing
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

"""Invalidation without SCAN: generation counters hashed into every cache key.

Three generations go into every key: one for everything in the cache, one for the
client's namespace, and one for the namespace's model. ``invalidate(model=m)`` bumps the
third, ``invalidate()`` the second and ``limpet flush`` (no namespace) the first; every
key made afterwards differs, so old entries are never read again and age out by TTL.
A Client scoped to its credentials (``cache_scope="credential"``) has two more, its
credentials' own and theirs for the model: its ``invalidate()`` bumps those, so one
tenant never invalidates another's entries, while a namespace's generations (``limpet
flush --namespace``) still reach every credential in it.
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
# Between a namespace and a credential scope (a hex digest, or "anonymous").
_CREDENTIAL_SEPARATOR = "\x1e"


def generation_name(namespace: str | None, model: str | None, *, credential: str = "") -> str:
    """The stored name of a generation: a model's in a namespace, a namespace's (model
    None), or everything's (both None, no credential); with ``credential``, those of one
    credential scope (``limpet.credentials``) in the namespace."""
    if namespace is None and model is None and not credential:
        return EVERYTHING
    owner = (namespace or "") + (_CREDENTIAL_SEPARATOR + credential if credential else "")
    return owner + _SEPARATOR + (EVERYTHING if model is None else model)


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
        credential: the client's credential scope, or "" when it shares the namespace's
            entries (``cache_scope="namespace"``).
        refresh_interval: seconds between background refreshes from the store.
        clock: monotonic seconds.
    """

    __slots__ = (
        "_all",
        "_clock",
        "_credential",
        "_due",
        "_loading",
        "_names",
        "_namespace",
        "_own",
        "_refreshing",
        "_scopes",
        "_store",
        "_values",
        "refresh_interval",
    )

    def __init__(
        self,
        store: GenerationStore | None = None,
        *,
        namespace: str = "",
        credential: str = "",
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._credential = credential
        self._all = generation_name(namespace, None)
        # What invalidate() bumps: this client's own scope, the namespace's or a credential's.
        self._own = generation_name(namespace, None, credential=credential)
        # Per model: the generations in its keys after EVERYTHING, this client's own last.
        self._names: dict[str, tuple[str, ...]] = {}
        # Per model: its key scope, built once while no generation changes.
        self._scopes: dict[str, str] = {}
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
        scope = self._scopes.get(model)
        if scope is None:
            names = self._names.get(model) or self._name(model)
            values = self._values
            if self._store is not None and names[-1] not in values:
                return None
            scope = ".".join(str(values.get(name, 0)) for name in (EVERYTHING, *names))
            self._scopes[model] = scope
        if self._store is not None and self._clock() >= self._due:
            self._schedule_refresh()
        return scope

    async def scope(self, model: str) -> str:
        """The key scope for a request to ``model``.

        The first request for a model in this process reads its generation from the store
        (one round trip, once), so it can never read entries invalidated elsewhere.
        """
        names = self._name(model)
        if self._store is not None and names[-1] not in self._values:
            # Concurrent first requests share one read, and none uses a guess meanwhile.
            loading = self._loading.get(model)
            if loading is None:
                loading = asyncio.ensure_future(self._load(model, names))
                self._loading[model] = loading
            await asyncio.shield(loading)
        return self.scope_now(model) or ".".join("0" * (len(names) + 1))

    async def _load(self, model: str, names: tuple[str, ...]) -> None:
        try:
            await self.refresh(also=names)
        finally:
            for name in names:
                self._values.setdefault(name, 0)
            del self._loading[model]

    async def bump(self, model: str | None = None) -> None:
        """Invalidate ``model``'s entries in this namespace, or every entry in this
        namespace when ``model`` is None (``limpet flush`` reaches every namespace); with a
        credential scope, only that scope's entries."""
        name = self._own if model is None else self._name(model)[-1]
        value = self._values.get(name, 0) + 1
        if self._store is not None:
            try:
                value = max(value, await self._store.bump_generation(name))
            except CacheUnavailableError as exc:
                # Still invalidate here; other processes catch up when the store is back
                # only if it is bumped again, so say so.
                logger.warning("limpet: invalidation of %r is local only: %s", name, exc)
        self._values[name] = value
        self._scopes.clear()

    async def refresh(self, also: Sequence[str] = ()) -> None:
        """Read every known generation (and those in ``also``) from the store now."""
        if self._store is None:
            return
        self._due = self._clock() + self.refresh_interval
        names = sorted({EVERYTHING, self._all, self._own, *self._values, *also})
        try:
            values = await self._store.generations(names)
        except CacheUnavailableError:
            return
        for name, value in zip(names, values, strict=True):
            # Never go back: a local bump the store missed must stay in force.
            if value > self._values.get(name, 0):
                self._values[name] = value
                self._scopes.clear()

    def _name(self, model: str) -> tuple[str, ...]:
        names = self._names.get(model)
        if names is None:
            names = (self._all, generation_name(self._namespace, model))
            if self._credential:
                names += (
                    self._own,
                    generation_name(self._namespace, model, credential=self._credential),
                )
            self._names[model] = names
        return names

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

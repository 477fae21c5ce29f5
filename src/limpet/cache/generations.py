"""Invalidation without SCAN: generation counters hashed into every cache key.

Three generations go into every key: one for everything in the cache, one for the
client's namespace, and one for the namespace's model. ``invalidate(model=m)`` bumps the
third, ``invalidate()`` the second and ``limpet flush`` (no namespace) the first; every
key made afterwards differs, so old entries are never read again and age out by TTL.
A Client scoped to its credentials (``cache_scope="credential"``) has two more, its
credentials' own and theirs for the model: its ``invalidate()`` bumps those, so one
tenant never invalidates another's entries, while a namespace's generations (``limpet
flush --namespace``) still reach every credential in it. A call that sends a key of its
own (``limpet serve``'s callers, ``extra_headers``) has two more still, its key's own and
theirs for the model, so ``limpet flush --cache-scope credential`` with that key reaches
its entries, as it reaches those of a Client sending the key.

With no store (every tier in-process), the generations are kept with the cache
(``LocalGenerations``): Clients reading one cache's entries use one set of counters, so
one's ``invalidate()`` reaches the others' reads at once, as a store's would within its
refresh interval.

With a shared store (Redis), generations are read into the process and refreshed in the
background at most every ``refresh_interval`` seconds, so a cache hit stays one GET and
another process's invalidation takes effect here within that interval while requests
keep coming. Generations read more than twice the interval ago are never used without
reading them again (a process idle for an hour reads before its next request), so no
invalidation older than that is ever missed, unless the store cannot be read at all.

Only the ``max_tracked`` most recently used models' generations are kept (and
refreshed); the least recently used is forgotten beyond that. A forgotten model is read
from the store again, like a model never seen, before its next request uses it, so
eviction costs a round trip and never a stale generation. A model whose bump reached
only this process (the store was down, or there is none) is not forgotten while no store
could give it back: a bump made while the store was down is sent to it by the next
refresh that finds it back, and until then the store's older value is not taken for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from limpet.cache.local_generations import LocalGenerations
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
#: Models tracked at once: one MGET of their generations stays far inside a read budget.
DEFAULT_MAX_TRACKED = 1_000

#: The generation that covers every namespace and model.
EVERYTHING = "*"

# What the generations are tracked by: a model (for calls that send no key of their own),
# or a model and the credential scope of the key its calls send (a tuple: no model equals
# one, and the hit path builds no tuple for a call without a key).
_Tracked = str | tuple[str, str]

# Between a namespace and a model in a generation's name; no namespace or model has it.
_SEPARATOR = "\x1f"
# Between a namespace and a credential scope (a hex digest, or "anonymous").
_CREDENTIAL_SEPARATOR = "\x1e"


def generation_name(namespace: str | None, model: str | None, *, credential: str = "") -> str:
    """The stored name of a generation: a model's in a namespace, a namespace's (model
    None), or everything's (both None, no credential); with ``credential``, those of one
    credential scope (``limpet.pipeline.credentials``) in the namespace."""
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
        local: with no store, the counters of the Clients sharing this one's cache
            (``LocalGenerations``); None: its own.
        namespace: the client's namespace; its generations are its own.
        credential: the client's credential scope, or "" when it shares the namespace's
            entries (``cache_scope="namespace"``).
        refresh_interval: seconds between background refreshes from the store.
        max_tracked: models whose generations are kept (least recently used forgotten
            first).
        clock: monotonic seconds.
    """

    __slots__ = (
        "__weakref__",
        "_all",
        "_clock",
        "_credential",
        "_due",
        "_fallback_until",
        "_fixed",
        "_fresh_until",
        "_loading",
        "_local",
        "_models",
        "_namespace",
        "_outage",
        "_own",
        "_pinned",
        "_refreshing",
        "_scopes",
        "_store",
        "_uses",
        "_values",
        "max_tracked",
        "refresh_interval",
    )

    def __init__(
        self,
        store: GenerationStore | None = None,
        *,
        local: LocalGenerations | None = None,
        namespace: str = "",
        credential: str = "",
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._credential = credential
        self._all = generation_name(namespace, None)
        # What invalidate() bumps: this client's own scope, the namespace's or a credential's.
        self._own = generation_name(namespace, None, credential=credential)
        # In every key, hence never forgotten.
        self._fixed = frozenset((EVERYTHING, self._all, self._own))
        # Tracked models (alone, or with the credential scope of a key their calls send),
        # least recently used first: the generations in each one's keys after EVERYTHING,
        # this client's own model generation last (``bump`` bumps it).
        self._models: OrderedDict[_Tracked, tuple[str, ...]] = OrderedDict()
        # Per tracked model: its key scope, built once while no generation changes.
        self._scopes: dict[_Tracked, str] = {}
        self._values: dict[str, int] = {}
        # With no store: the counters shared with the other Clients of the cache, whose
        # values are this one's (never forgotten here: another may use them).
        self._local: LocalGenerations | None = None
        if store is None:
            self._local = local.current() if local is not None else LocalGenerations()
            self._values = self._local.values
            self._local.share(self)
        # How many tracked models use each generation (a model's are shared by the calls
        # to it that send a key of their own, and a key's by its calls to every model): a
        # value is forgotten with the last of them, never while another still uses it.
        self._uses: dict[str, int] = {}
        # Bumped here but not in any store: forgetting them would lose the bump.
        self._pinned: set[str] = set()
        # The mark of the outage unread scopes are in now (None: none drawn since the
        # last read that succeeded, or the last invalidation).
        self._outage: str | None = None
        self.max_tracked = max_tracked
        self._clock = clock
        self._due = 0.0
        # Until when the values may be used without reading the store first (two intervals
        # after the last full read began), and until when they may be used anyway because
        # the last read failed (the next one is due then): a store that cannot be read
        # costs one read per interval, not one per request.
        self._fresh_until = -math.inf
        self._fallback_until = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._loading: dict[_Tracked, asyncio.Future[None]] = {}
        self.refresh_interval = refresh_interval

    def scope_now(self, model: str, credential: str = "") -> str | None:
        """The key scope for a request to ``model`` (from a call whose own key has the
        credential scope ``credential``, or ""), or None when ``scope()`` must first read
        the model's generations from the store (never read, or read too long ago).
        Schedules a background refresh when one is due, so that, while requests keep
        coming, the cache-hit path never waits on the store."""
        scope = self._scope_of((model, credential) if credential else model)
        if scope is None or self._store is None:
            return scope
        now = self._clock()
        if now >= self._due:
            self._schedule_refresh()
        if now >= self._fresh_until and now >= self._fallback_until:
            return None
        return scope

    def _scope_of(self, tracked: _Tracked) -> str | None:
        """The key scope of a tracked model from the values this process holds, however
        old."""
        models = self._models
        scope = self._scopes.get(tracked)
        if scope is not None:
            models.move_to_end(tracked)
        else:
            names = models.get(tracked)
            if names is None:
                if self._store is not None:
                    return None
                names = self._track(tracked)
            else:
                models.move_to_end(tracked)
            values = self._values
            scope = ".".join(str(values.get(name, 0)) for name in (EVERYTHING, *names))
            self._scopes[tracked] = scope
        return scope

    async def scope(self, model: str, credential: str = "") -> str:
        """The key scope for a request to ``model`` (``credential``: as ``scope_now``'s).

        The first request for a model in this process (or the first since it was
        forgotten) reads its generations from the store (one round trip), so it can
        never read entries invalidated elsewhere. When that read fails, the scope says so
        (``?``) and matches no generation's entries; the next request reads again.
        Generations read too long ago are read again first (``scope_now``); when that read
        fails, the ones held are used.
        """
        tracked: _Tracked = (model, credential) if credential else model
        if self._store is not None and tracked not in self._models:
            # Concurrent first requests share one read, and none uses a guess meanwhile.
            loading = self._loading.get(tracked)
            if loading is None:
                loading = asyncio.ensure_future(self._load(tracked))
                self._loading[tracked] = loading
            await asyncio.shield(loading)
        elif self._store is not None and self.scope_now(model, credential) is None:
            # Every caller waits for the one refresh scope_now() started; cancelling one
            # cancels neither the refresh nor the others.
            refreshing = self._refreshing
            if refreshing is not None:
                await asyncio.wait((refreshing,))
        return self._scope_of(tracked) or self._unread_scope()

    def _unread_scope(self) -> str:
        """The scope of a model whose generations could not be read: the fixed ones held
        here, then ``?`` and the mark of this outage, which no read scope ends with.

        Its entries are this outage's alone: a mark is drawn when a read fails after one
        succeeded (or at the first failure), and again at any invalidation, so what was
        stored under an unread scope is never served after an invalidation, whether this
        process made it or read it since; nor in a later outage (the model's scope reads
        the same in each, and the flushes between them would not reach it)."""
        if self._outage is None:
            self._outage = secrets.token_hex(8)
        values = self._values
        fixed = ".".join(str(values.get(name, 0)) for name in (EVERYTHING, self._all, self._own))
        return f"{fixed}.?{self._outage}"

    async def _load(self, tracked: _Tracked) -> None:
        names = self._names_of(tracked)
        try:
            read = self._fixed.union(names)
            started, everything = self._clock(), False
            if started >= self._due:  # a refresh was due anyway: one read for both
                self._due = started + self.refresh_interval
                read |= self._values.keys()
                everything = True
            values = await self._read(read)
            if everything:
                self._read_all(started, values is not None)
            if values is not None:
                for name in names:
                    values.setdefault(name, 0)
                self._merge(values)
                self._track(tracked, names)
        finally:
            del self._loading[tracked]

    async def bump(self, model: str | None = None) -> None:
        """Invalidate ``model``'s entries in this namespace, or every entry in this
        namespace when ``model`` is None (``limpet flush`` reaches every namespace); with a
        credential scope, only that scope's entries."""
        names = None if model is None else self._names_of(model)
        name = self._own if names is None else names[-1]
        value = self._values.get(name, 0) + 1
        if self._store is None:
            assert self._local is not None  # made whenever there is no store
            value = self._local.bump(name)  # and every sharer's scopes are built anew
            self._pinned.add(name)
        else:
            try:
                value = max(value, await self._store.bump_generation(name))
            except CacheUnavailableError as exc:
                # Still invalidate here, and bump the store once it is back (``refresh``).
                logger.warning(
                    "limpet: invalidation of %r is local until the store is back: %s", name, exc
                )
                self._pinned.add(name)
        if self._held(name):
            self._values[name] = max(value, self._values.get(name, 0))
        self._scopes.clear()
        self._outage = None  # what an unread scope held before is invalidated too
        if model is not None and (self._store is None or name in self._pinned):
            self._track(model, names)  # a bump only this process knows is kept with its model

    def bumped_elsewhere(self) -> None:
        """A Client sharing this one's ``LocalGenerations`` bumped one: the key scopes
        built from the values before are built anew."""
        self._scopes.clear()

    def count_with(self, local: LocalGenerations) -> None:
        """Count with ``local`` from now on (the counters this one's were merged into)."""
        self._local = local
        self._values = local.values
        local.share(self)
        self._scopes.clear()

    async def refresh(self) -> None:
        """Read every generation this process uses from the store now."""
        if self._store is None:
            return
        started = self._clock()
        self._due = started + self.refresh_interval
        if self._pinned:
            await self._send_pinned()
        values = await self._read(self._values.keys() | self._fixed)
        self._read_all(started, values is not None)
        if values is not None:
            # A model forgotten while the read was out is read again when it is used.
            self._merge({n: v for n, v in values.items() if n in self._values or n in self._fixed})

    async def _send_pinned(self) -> None:
        """Bump in the store what this process bumped while it was down: the invalidation
        reaches the other processes, and the store's older value never undoes it here
        (a process that never read the name bumped it from 0)."""
        assert self._store is not None
        for name in sorted(self._pinned):
            try:
                value = await self._store.bump_generation(name)
            except CacheUnavailableError:
                return  # still down: the next refresh sends it
            self._pinned.discard(name)
            self._values[name] = max(value, self._values.get(name, 0))
            self._scopes.clear()

    def _read_all(self, started: float, ok: bool) -> None:
        """A read of every generation held, begun at ``started``, succeeded or failed."""
        if ok:
            self._fresh_until = max(self._fresh_until, started + 2 * self.refresh_interval)
        else:
            self._fallback_until = self._due

    async def _read(self, names: Iterable[str]) -> dict[str, int] | None:
        """``names``' values in the store, or None when it cannot say."""
        assert self._store is not None
        ordered = sorted(names)
        try:
            values = await self._store.generations(ordered)
        except CacheUnavailableError:
            return None
        self._outage = None  # the next failure is another outage
        return dict(zip(ordered, values, strict=True))

    def _merge(self, values: dict[str, int]) -> None:
        known, pinned = self._values, self._pinned
        for name, value in values.items():
            if name in pinned:
                continue  # bumped here while the store was down: ours until it is sent
            mine = known.get(name)
            if mine is None or value > mine:  # never go back
                known[name] = value
                self._scopes.clear()

    def _held(self, name: str) -> bool:
        """Whether generation ``name``'s value is kept here: fixed, bumped here alone, used
        by a tracked model, or by one being read now (that read may return the value from
        before a bump made meanwhile, which the merge must find held). Else it is read
        with a model that uses it, when one is used (kept, the values of models never
        used here grew without bound)."""
        return (
            name in self._pinned
            or name in self._fixed
            or name in self._uses
            or any(name in self._names_of(tracked) for tracked in self._loading)
        )

    def _names_of(self, tracked: _Tracked) -> tuple[str, ...]:
        names = self._models.get(tracked)
        if names is None:
            model, credential = (tracked, "") if isinstance(tracked, str) else tracked
            namespace = self._namespace
            names = (self._all, generation_name(namespace, model))
            if credential:  # the call's own key's, before the client's (last: bumped)
                names += (
                    generation_name(namespace, None, credential=credential),
                    generation_name(namespace, model, credential=credential),
                )
            if self._credential:
                names += (
                    self._own,
                    generation_name(namespace, model, credential=self._credential),
                )
        return names

    def _track(self, tracked: _Tracked, names: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """Keep a tracked model's generations as the most recently used; forget the least
        recently used one beyond ``max_tracked`` that no store could give back."""
        models, uses = self._models, self._uses
        held = models.get(tracked)
        if held is None:
            held = names or self._names_of(tracked)
            for name in held:
                uses[name] = uses.get(name, 0) + 1
        models[tracked] = held
        models.move_to_end(tracked)
        pinned, fixed = self._pinned, self._fixed
        while len(models) > self.max_tracked:
            # Not the one just tracked, nor one holding a bump the store has not (names in
            # every key are never forgotten, pinned or not): while those are all there is,
            # more than max_tracked are kept.
            forgettable = next(
                (
                    m
                    for m, ns in models.items()
                    if m != tracked and not any(n in pinned and n not in fixed for n in ns)
                ),
                None,
            )
            if forgettable is None:
                break
            for name in models.pop(forgettable):
                left = uses[name] - 1
                if left:
                    uses[name] = left
                    continue
                del uses[name]
                if name not in fixed and self._local is None:  # shared values stay
                    self._values.pop(name, None)
            self._scopes.pop(forgettable, None)
        return held

    async def aclose(self) -> None:
        """Stop the background refresh. Invalidations the store missed while it was down
        get a last try first: closing must not take them away from the other processes,
        which would go on serving what was invalidated (a warning says when it fails)."""
        task, self._refreshing = self._refreshing, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._store is not None and self._pinned:
            await self._send_pinned()
            if self._pinned:
                logger.warning(
                    "limpet: %d invalidation(s) never reached the store: other processes "
                    "serve those entries until they expire",
                    len(self._pinned),
                )

    def _schedule_refresh(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._due = self._clock() + self.refresh_interval
        self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

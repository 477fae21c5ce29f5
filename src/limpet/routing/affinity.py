"""The affinity map: which endpoint holds a prefix's provider cache now.

Rendezvous hashing sends a cold prefix to the same endpoint from every process. Once a
prefix has been served somewhere else (bounded load spilled it), its cache lives there,
so the router remembers prefix-link hash -> endpoint, for as long as the provider keeps
the cache (refreshed on every use), and looks it up before hashing.

The map lives in-process (``AffinityMap``, an LRU) and, when the Client's cache has a
Redis tier, is mirrored to Redis (``RedisAffinityStore`` behind the ``AffinityStore``
protocol) so that other processes follow a moved prefix too. Only the exceptions go to
Redis: a prefix where its hash puts it is found by every process without asking. The
mirror is best effort like every cache here: a Redis fault is counted and logged once,
never raised, and writes leave in the background (``AffinityMirror``).

Pins are scoped as cache keys are. The shared copy is the Client's alone
(``affinity_scope``), and within a Client a call with a key scope of its own (a tenant,
or credentials it sends itself) reads and writes its pins under ``pin_prefix`` of that
scope: where one caller's prompts moved a prefix never steers, nor tells, another.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, cast, runtime_checkable

from limpet.cache.capabilities import lowest_with
from limpet.errors import CacheUnavailableError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

__all__ = [
    "AffinityEntry",
    "AffinityMap",
    "AffinityMirror",
    "AffinityStore",
    "RedisAffinityStore",
    "RedisTier",
    "affinity_scope",
    "affinity_store_for",
    "pin_prefix",
]

logger = logging.getLogger("limpet.routing")

_T = TypeVar("_T")

#: (prefix-link hash, endpoint name, seconds to keep it).
AffinityEntry = tuple[str, str, float]

# Enough to amortise a round trip; small enough for one write timeout.
_WRITE_BATCH = 64
# A link's mirror is refreshed when a quarter of its TTL has passed since the last write,
# not on every use: one write per prefix per minute or so, not one per call.
_MIRROR_REFRESH = 0.25
_NAMESPACE = "affinity:"


@runtime_checkable
class AffinityStore(Protocol):
    """Where the affinity map is shared between processes.

    Both methods may raise ``CacheUnavailableError``; the router absorbs it.
    """

    async def lookup(self, links: Sequence[str]) -> Sequence[str | None]:
        """The endpoint name recorded for each link, or None, in order."""
        ...

    async def remember(self, entries: Sequence[AffinityEntry]) -> None:
        """Record each (link, endpoint, ttl), replacing what was there."""
        ...


class AffinityMap:
    """An in-process LRU of link -> endpoint, each entry with its own TTL.

    Args:
        max_entries: beyond this many, the least recently used entry goes.
    """

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # link -> (endpoint, expires_at, mirrored_at)
        self._entries: OrderedDict[str, tuple[str, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AffinityMap({len(self)}/{self.max_entries})"

    def get(self, link: str, now: float) -> str | None:
        """The endpoint recorded for ``link``, or None when absent or expired."""
        entry = self._entries.get(link)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[link]
            return None
        self._entries.move_to_end(link)
        return entry[0]

    def put(
        self,
        link: str,
        endpoint: str,
        ttl: float,
        now: float,
        *,
        mirrored: bool = False,
        hashed: bool = False,
        move: bool = True,
    ) -> bool:
        """Record ``link`` on ``endpoint`` until ``now + ttl``.

        Args:
            mirrored: the entry came from the shared store, so it needs no write back.
            hashed: ``endpoint`` is the one the link's key hashes to, which every process
                finds by itself: the store needs to hear of it only when it replaces
                another endpoint there.
            move: replace a live entry naming another endpoint; when False such an entry
                is left alone (a call routed before the prefix moved must not move it back).

        Returns:
            True when the shared store should be told: the entry moved, or it is new or a
            quarter of its TTL old and not ``hashed``.
        """
        old = self._entries.get(link)
        live = old is not None and old[1] > now
        moved = live and old is not None and old[0] != endpoint
        if moved and not move:
            return False
        stale = not live or (old is not None and now - old[2] >= ttl * _MIRROR_REFRESH)
        tell = not mirrored and (moved or (stale and not hashed))
        mirrored_at = now if mirrored or tell or old is None else old[2]
        self._entries[link] = (endpoint, now + ttl, mirrored_at)
        self._entries.move_to_end(link)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return tell

    def clear(self) -> None:
        self._entries.clear()


@runtime_checkable
class RedisTier(Protocol):
    """What the affinity store needs of a ``RedisCache``: its client, key prefix, timeouts,
    ``run()`` and batched ``read_key()``, so it shares the cache's circuit breaker, error
    mapping and read batches."""

    read_timeout: float
    write_timeout: float

    @property
    def redis(self) -> Redis | RedisCluster: ...

    def redis_key(self, key: str) -> str: ...

    async def run(self, command: str, budget: float, call: Callable[[], Awaitable[_T]]) -> _T: ...

    async def read_key(self, redis_key: str) -> object: ...


class RedisAffinityStore:
    """The affinity map's shared copy, in the Redis of a ``RedisCache``.

    One string key per link, ``{cache prefix}affinity:{scope}{link}`` -> endpoint name,
    with a Redis-native TTL, so an entry cannot outlive the provider's cache even if no
    process ever reads it again. Reads join the cache's own read batches (a burst of
    routing decisions is a few MGETs, not one per decision, so it cannot exhaust the
    pool); writes are one pipeline within its write timeout. The cache is lent, never
    closed here.

    Args:
        cache: the Redis tier (a ``RedisCache``).
        scope: whose map it is (``affinity_scope``: the Client's namespace and credential
            scope); "" for one shared by every Client of the Redis.
    """

    __slots__ = ("_cache", "_scope")

    def __init__(self, cache: RedisTier, scope: str = "") -> None:
        self._cache = cache
        self._scope = scope

    def __repr__(self) -> str:
        return f"RedisAffinityStore({self._cache!r})"

    def _key(self, link: str) -> str:
        return self._cache.redis_key(_NAMESPACE + self._scope + link)

    async def lookup(self, links: Sequence[str]) -> list[str | None]:
        """Raises ``CacheUnavailableError`` when Redis is down, slow or refuses."""
        if not links:
            return []
        cache = self._cache
        values = await asyncio.gather(*(cache.read_key(self._key(link)) for link in links))
        found: list[str | None] = []
        for value in values:
            if isinstance(value, bytes):
                found.append(value.decode(errors="replace"))
            else:
                found.append(value if isinstance(value, str) else None)
        return found

    async def remember(self, entries: Sequence[AffinityEntry]) -> None:
        """Raises ``CacheUnavailableError`` when Redis is down, slow or refuses."""
        if not entries:
            return
        cache = self._cache

        async def write() -> None:
            async with cache.redis.pipeline(transaction=False) as pipe:
                for link, endpoint, ttl in entries:
                    # Rounded up: PX 0 is an error.
                    pipe.set(self._key(link), endpoint.encode(), px=max(math.ceil(ttl * 1000), 1))
                await pipe.execute()

        await cache.run("SET", cache.write_timeout, write)


def affinity_store_for(tiers: Sequence[object], scope: str = "") -> AffinityStore | None:
    """A ``RedisAffinityStore`` of ``scope`` on the lowest tier that lends its Redis (the
    one processes share; ``TierCapabilities.redis``), if any."""
    tier = lowest_with(tiers, "redis")
    return None if tier is None else RedisAffinityStore(cast(RedisTier, tier), scope)


def affinity_scope(namespace: str, credential: str) -> str:
    """The scope of a Client's affinity map in a shared Redis: its namespace and
    credential scope, digested (16 hex digits and a ``:``). Apart, one tenant's traffic
    never steers another's calls (nor tells it, by where they go, what the other sent).
    Within it, the pins of a call with a key scope of its own (a tenant, credentials it
    sends itself) are apart again, under ``pin_prefix``.

    Example:
        >>> affinity_scope("", "") == affinity_scope("", "") != affinity_scope("b", "")
        True
    """
    digest = hashlib.sha256(f"{namespace}\x00{credential}".encode()).hexdigest()
    return digest[:16] + ":"


@functools.lru_cache(maxsize=4096)
def pin_prefix(scope: str) -> str:
    """What a call's pins are prefixed with in the affinity map, local and shared, when
    the call has a key scope of its own (``Keying.own_scope``: a tenant, credentials it
    sends itself or headers that enter its key): its scope, digested (16 hex digits and a
    ``/``). Calls of the Client's own scope pin bare links, as they always have.

    Example:
        >>> pin_prefix("a") == pin_prefix("a") != pin_prefix("b"), len(pin_prefix("a"))
        (True, 17)
    """
    return hashlib.sha256(b"limpet/pins\x00" + scope.encode()).hexdigest()[:16] + "/"


class AffinityMirror:
    """Reads the shared store when the local map has nothing, and writes to it in the
    background, so a call never waits for a write. Absorbs and counts every store fault.

    Args:
        store: the shared store (lent: never closed here).
    """

    __slots__ = ("_failing", "_pending", "_writer", "errors", "store")

    def __init__(self, store: AffinityStore) -> None:
        self.store = store
        self.errors = 0
        self._failing = False
        # link -> (endpoint, ttl): a newer write of a link replaces one not yet sent.
        self._pending: dict[str, tuple[str, float]] = {}
        self._writer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"AffinityMirror({self.store!r}, pending={len(self._pending)})"

    async def lookup(self, links: Sequence[str]) -> Sequence[str | None]:
        """What the store holds for each link; all None when it cannot say."""
        try:
            found = await self.store.lookup(links)
        except CacheUnavailableError as exc:
            self._fault(exc)
            return [None] * len(links)
        self._recovered()
        if len(found) != len(links):
            return [None] * len(links)
        return found

    def remember(self, link: str, endpoint: str, ttl: float) -> None:
        """Queue a write; it leaves with the next batch (outside an event loop: with the
        next write made inside one, or at ``flush()``)."""
        self._pending[link] = (endpoint, ttl)
        if self._writer is None or self._writer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._writer = loop.create_task(self._drain(), name="limpet-affinity-writer")

    async def flush(self) -> None:
        """Wait until every queued write has been sent or has failed."""
        if self._pending and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        while (writer := self._writer) is not None and not writer.done():
            # Shielded: a caller that gives up waiting must not cancel others' writes.
            await asyncio.shield(writer)

    async def _drain(self) -> None:
        pending = self._pending
        while pending:
            links = list(pending)[:_WRITE_BATCH]
            batch = [(link, *pending.pop(link)) for link in links]
            try:
                await self.store.remember(batch)
            except CacheUnavailableError as exc:
                self._fault(exc)
            else:
                self._recovered()

    def _fault(self, exc: CacheUnavailableError) -> None:
        self.errors += 1
        if not self._failing:
            self._failing = True
            logger.warning("limpet routing: affinity store unavailable, routing locally: %s", exc)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("limpet routing: affinity store is back")

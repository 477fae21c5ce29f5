"""Tiers of cache backends: read in order, back-fill, and absorb every cache fault.

This is the one home of graceful fall-through. Backends raise ``CacheUnavailableError``;
an entry that does not decode is ``CacheCorruptError``. Here both become a counted miss,
so a silent miss and a fault are never confused, and a cache never fails a call.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from limpet._checks import check_callable, check_hmac_key
from limpet.cache.base import CacheBackend, CacheEntry, EntryCodec
from limpet.cache.capabilities import (
    Capability,
    Flushable,
    GuardedTier,
    LeaseTier,
    ReadableNow,
    TierCapabilities,
    WritableNow,
    capabilities_of,
    leading_local,
    lowest_with,
    shared_hmac_key,
    value_room,
)
from limpet.cache.key_changes import KeyChanges, key_changes_of
from limpet.cache.local_generations import LocalGenerations, local_generations_of
from limpet.errors import CacheCorruptError, CacheUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from limpet.cache.generations import GenerationStore
    from limpet.cache.redis.backend import RedisCache
    from limpet.flight.store import FlightStore

__all__ = ["DEFAULT_MAX_ENTRY_BYTES", "TierStats", "TieredCache"]

logger = logging.getLogger("limpet.cache")

V = TypeVar("V")

#: Encoded entries above this many bytes are served but not stored.
DEFAULT_MAX_ENTRY_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class TierStats:
    """Counters of a ``TieredCache``.

    Attributes:
        hits: hits per tier, L1 first.
        misses: lookups no tier answered.
        errors: backend faults absorbed (each a miss or a lost write, never a failed call).
        corrupt: entries that did not decode, were stored under another key, failed their
            signature or were ill-shaped (each deleted, and a miss).
        oversized: answers not stored for being larger than ``max_entry_bytes``.
        unwritten: writes not made: refused by a tier as they were made (down, its
            breaker open, closed), or of an answer no entry could hold; each is an error
            too. (A write a tier queued and then lost is its own ``failed_writes`` or
            ``dropped_writes``.)
    """

    hits: list[int] = field(default_factory=list)
    misses: int = 0
    errors: int = 0
    corrupt: int = 0
    oversized: int = 0
    unwritten: int = 0


class TieredCache:
    """Cache tiers, fastest first: ``TieredCache(MemoryCache(), RedisCache.from_url(...))``.

    A read tries each tier in order; a hit in a lower tier back-fills the tiers above it
    with the entry's remaining TTL. A write goes to every tier. A tier that fails is
    counted and skipped, and logged once per outage.

    The tiered cache owns its tiers: ``aclose()`` closes them. What each tier can do is
    read once from its ``capabilities`` (``limpet.cache.capabilities``), and asked of the
    tiered cache: ``local_tiers``, ``generation_store``, ``flight_store``, ``redis_tier``,
    ``guarded_tiers``, or ``lowest_with(capability)``. A local tier 0 that also offers a
    synchronous ``get_now(key)`` (``MemoryCache`` does) is read without a coroutine on
    the hit path (``get_now()``); its ``get_now`` must answer as its ``get`` would.

    Args:
        tiers: one or more backends, fastest first.
        hmac_key: sign entries with HMAC-SHA256 over their key and value (and, given to a
            tier that signs flight notices but has no key of its own, those); an entry that
            fails its signature (altered, or copied to another key) is a miss.
        clock: wall-clock seconds, to compute remaining TTLs; inject a fake one in tests.
        max_entry_bytes: an encoded entry larger than this is not stored (the answer is
            still served, and counted in ``stats.oversized``), so one huge answer cannot
            evict thousands of small ones or stall Redis.
    """

    __slots__ = (
        "__weakref__",  # it holds its Clients' generations, weakly (``local_generations``)
        "_changes",
        "_clock",
        "_codec",
        "_failing",
        "_hmac_key",
        "_read_now",
        "_reads_now",
        "_room",
        "_writes_now",
        "capabilities",
        "local_tiers",
        "max_entry_bytes",
        "stats",
        "tiers",
    )

    def __init__(
        self,
        *tiers: CacheBackend,
        hmac_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    ) -> None:
        if not tiers:
            raise ConfigurationError("TieredCache: expected at least one tier")
        check_callable("TieredCache.clock", clock, "a callable returning unix seconds")
        for tier in tiers:
            if not isinstance(tier, CacheBackend):
                raise ConfigurationError(
                    f"TieredCache: expected CacheBackend tiers, got {type(tier).__name__}"
                )
        if (
            isinstance(max_entry_bytes, bool)
            or not isinstance(max_entry_bytes, int)
            or max_entry_bytes < 1
        ):
            raise ConfigurationError(
                f"TieredCache.max_entry_bytes: expected an int >= 1, got {max_entry_bytes!r}"
            )
        self.max_entry_bytes = max_entry_bytes
        self._room = value_room(tiers, max_entry_bytes)  # what every tier keeps
        self.tiers: tuple[CacheBackend, ...] = tiers
        self.stats = TierStats(hits=[0] * len(tiers))
        #: What each tier can do, in tier order.
        self.capabilities: tuple[TierCapabilities, ...] = tuple(map(capabilities_of, tiers))
        check_hmac_key("TieredCache.hmac_key", hmac_key)
        if hmac_key is None:
            hmac_key = shared_hmac_key(tiers, self.capabilities)
        self._codec = EntryCodec(hmac_key)
        self._hmac_key = hmac_key
        #: How many leading tiers answer in-process, without I/O (``MemoryCache``).
        self.local_tiers = leading_local(self.capabilities)
        # Each tier's synchronous read and write, when it is local and has them.
        self._reads_now = tuple(
            tier.get_now if can.local and isinstance(tier, ReadableNow) else None
            for tier, can in zip(tiers, self.capabilities, strict=True)
        )
        # Tier 0's, the hit path's read (``get_now()``).
        self._read_now = self._reads_now[0]
        self._writes_now = tuple(
            tier.set_now if can.local and isinstance(tier, WritableNow) else None
            for tier, can in zip(tiers, self.capabilities, strict=True)
        )
        if hmac_key is not None:
            for tier, can in zip(tiers, self.capabilities, strict=True):
                # One key signs entries and a shared tier's flight notices alike, so a
                # fleet configured with one hmac_key trusts its leaders' final errors.
                if can.leases and cast(LeaseTier, tier).hmac_key is None:
                    cast(LeaseTier, tier).hmac_key = hmac_key
        self._clock = clock
        self._failing = [False] * len(tiers)
        # Each tier's recent writes and deletes, made through any cache (``key_changes``).
        self._changes: tuple[KeyChanges, ...] = tuple(map(key_changes_of, tiers))

    def __repr__(self) -> str:
        return f"TieredCache({', '.join(repr(t) for t in self.tiers)})"

    def lowest_with(self, capability: Capability) -> CacheBackend | None:
        """The lowest tier (the one processes share) that has ``capability``, or None."""
        return lowest_with(self.tiers, capability)

    @property
    def generation_store(self) -> GenerationStore | None:
        """The lowest tier that keeps generations (the one processes share), if any."""
        return cast("GenerationStore | None", self.lowest_with("generations"))

    @property
    def local_generations(self) -> LocalGenerations:
        """The generations of the Clients reading this cache when no tier keeps them
        (``generation_store`` is None): those of every Client given this cache, or a
        cache sharing a tier with it, or the tier itself (one ``MemoryCache`` in two
        caches: one Client's ``invalidate()`` reaches the other's reads)."""
        return local_generations_of((self, *self.tiers))

    @property
    def flight_store(self) -> FlightStore | None:
        """Leases and notices of the lowest tier that offers them, if any (built by the
        tier on first use, and closed with it)."""
        tier = cast("LeaseTier | None", self.lowest_with("leases"))
        return None if tier is None else tier.flight_store

    @property
    def redis_tier(self) -> RedisCache | None:
        """The lowest tier that lends its Redis to limpet's other shared state (affinity
        map, fleet counters), if any."""
        return cast("RedisCache | None", self.lowest_with("redis"))

    @property
    def guarded_tiers(self) -> tuple[GuardedTier, ...]:
        """The tiers behind a circuit breaker, in tier order."""
        return tuple(
            cast(GuardedTier, tier)
            for tier, can in zip(self.tiers, self.capabilities, strict=True)
            if can.breaker
        )

    @property
    def readable_now(self) -> bool:
        """Whether ``get_now()`` reads tier 0: it is local, with a synchronous ``get_now``."""
        return self._read_now is not None

    def get_now(self, key: str) -> CacheEntry | None:
        """The entry in tier 0, read without awaiting anything when ``readable_now`` (an
        in-process tier with a synchronous ``get_now(key)``, as ``MemoryCache``): the hit
        path's read. A hit is counted as ``get()`` counts it; a miss is not counted (the
        tiers below are still to be read).

        Raises:
            CacheCorruptError: tier 0 holds a corrupt entry under ``key``, neither counted
                nor deleted here: ``get()`` does both (and may await).
        """
        read = self._read_now
        if read is None:
            return None
        try:
            data = read(key)
        except CacheUnavailableError as exc:
            self._fault(0, exc)
            return None
        if self._failing[0]:
            self._recovered(0)
        if data is None:
            return None
        entry = self._codec.decode(key, data)  # tier 0 expires its own entries
        self.stats.hits[0] += 1
        return entry

    def get(
        self, key: str, *, start: int = 0, stop: int | None = None, count_miss: bool = True
    ) -> Awaitable[tuple[CacheEntry, int] | None]:
        """The entry and the index of the tier that answered, or None on a miss (awaited).

        A plain method returning ``get_value``'s coroutine: the hit path pays for one
        coroutine, not two.

        Args:
            start, stop: read only ``tiers[start:stop]``; a hit still back-fills every
                tier above the one that answered.
            count_miss: count a miss in ``stats.misses`` when the last tier was read (False:
                the caller reads again, and that read counts it).
        """
        return self.get_value(
            key, self._decode_entry, start=start, stop=stop, count_miss=count_miss
        )

    async def get_value(
        self,
        key: str,
        decode: Callable[[str, bytes], tuple[V, float | None]],
        *,
        start: int = 0,
        stop: int | None = None,
        count_miss: bool = True,
    ) -> tuple[V, int] | None:
        """As ``get``, for a value of another kind (an embedding vector): ``decode(key,
        data)`` gives the value and its ``expires_at`` (None: of an age unknown here, so
        served from where it is and back-filled nowhere), and raises ``CacheCorruptError``
        for bytes not bound to ``key`` (or badly signed), which are then deleted and
        counted, like a corrupt entry.

        A tier above the one that answered is not back-filled when ``key`` was written or
        deleted there since this read began (``key_changes``): what was read may be what
        that write replaced."""
        tiers, failing, changes = self.tiers, self._failing, self._changes
        noted = [tier_changes.seq for tier_changes in changes]
        for index in range(start, len(tiers) if stop is None else stop):
            read_now = self._reads_now[index]
            try:  # an in-process tier is read without a coroutine
                data = read_now(key) if read_now is not None else await tiers[index].get(key)
            except CacheUnavailableError as exc:
                self._fault(index, exc)
                continue
            if failing[index]:
                self._recovered(index)
            if data is None:
                continue
            try:
                value, expires_at = decode(key, data)
            except CacheCorruptError as exc:
                self.stats.corrupt += 1
                logger.warning("limpet cache: corrupt entry in tier %d deleted: %s", index, exc)
                await self._delete_from(index, key)
                continue
            # An in-process tier 0 expires its own entries. Any other's are checked: a
            # server's expiry runs from when it got the write, which may be late (a SET
            # that timed out against a paused server lands when it resumes, with its whole
            # TTL), and from its clock (skew); a lower tier's are back-filled upwards with
            # what is left of their TTL.
            if (index or read_now is None) and expires_at is not None:
                remaining = expires_at - self._clock()
                if remaining <= 0:
                    continue
                for upper in range(index):
                    if changes[upper].unchanged(key, noted[upper]):
                        await self._set_in(upper, key, data, remaining)
            self.stats.hits[index] += 1
            return value, index
        if count_miss and (stop is None or stop >= len(self.tiers)):
            self.stats.misses += 1
        return None

    @property
    def hmac_key(self) -> bytes | None:
        """The key entries are signed with, for codecs of other kinds of values."""
        return self._hmac_key

    async def set_value(
        self, key: str, data: bytes, ttl: float, *, replacing: bool = False
    ) -> bool:
        """Store bytes already encoded, bound to ``key`` (and signed with ``hmac_key``) by
        their own codec, in every tier for ``ttl`` seconds. Returns False, storing nothing
        (counted in ``stats.oversized``), when they are larger than ``max_entry_bytes``:
        then whatever ``key`` held is deleted (``_not_stored``).

        ``replacing``: they replace a value that must not be served any more
        (``cache="refresh"``), so that value is deleted first: a tier that cannot take the
        write now (its breaker open, its queue full) must not keep it, and a delete it
        cannot take is owed to it (``limpet.cache.owed_deletes``)."""
        if len(data) > self.max_entry_bytes:
            self.stats.oversized += 1
            logger.info(
                "limpet cache: a value of %d bytes was not stored (max_entry_bytes=%d)",
                len(data),
                self.max_entry_bytes,
            )
            await self._not_stored(key)
            return False
        if replacing:
            await self.delete(key)
        self._begin_change(key)
        try:
            for index, write_now in enumerate(self._writes_now):
                if write_now is None:
                    await self._set_in(index, key, data, ttl)
                    continue
                try:  # an in-process tier, written without a coroutine
                    write_now(key, data, ttl)
                except CacheUnavailableError as exc:
                    self.stats.unwritten += 1
                    self._fault(index, exc)
        finally:
            self._end_change(key)
        return True

    def _begin_change(self, key: str) -> None:
        """Note a write or delete of ``key`` beginning in every tier: no read back-fills
        ``key`` from now until it has ended (``_end_change``), nor a read begun before."""
        for changes in self._changes:
            changes.begin(key)

    def _end_change(self, key: str) -> None:
        for changes in self._changes:
            changes.end(key)

    def _decode_entry(self, key: str, data: bytes) -> tuple[CacheEntry, float | None]:
        """The entry, and when it expires as this process's clock reads it. Its times are
        its writer's clock's: one running ahead of this one's would otherwise fill the
        tiers above for that much longer (an hour ahead, an entry of two seconds was
        served from tier 0 for an hour). Made "later" than now, it is of an age no clock
        here can tell, and so is what is left of its TTL: None, served from the tier that
        holds it (whose server keeps its TTL) and back-filled nowhere."""
        entry = self._codec.decode(key, data)
        return entry, None if entry.created_at > self._clock() else entry.expires_at

    async def set(
        self, key: str, entry: CacheEntry, *, replacing: bool = False
    ) -> tuple[bytes, float] | None:
        """Store ``entry`` in every tier until its ``expires_at``. ``replacing``: it
        replaces an answer that must not be served any more (``cache="refresh"``), which
        is deleted first, whether or not ``entry`` is stored (``set_value``).

        Returns:
            The encoded entry and its TTL (for a cross-process flight to share), or None
            when it had already expired or is larger than ``max_entry_bytes``.
        """
        ttl = entry.expires_at - self._clock()
        if ttl <= 0:
            if replacing:
                await self._not_stored(key)
            return None
        try:
            data = self._codec.encode(key, entry)
            if len(data) > self._room and entry.stream is not None:
                # A long stream's chunking is many times its answer (a chunk's JSON for
                # each token): the answer is kept without it, replayed in chunks of its
                # body, rather than not kept at all.
                data = self._codec.encode(key, entry, chunking=False)
        except (struct.error, OverflowError, ValueError, TypeError) as exc:
            # A value no entry can hold (a count past u64, a body orjson cannot write): a
            # lost write, never a failed call. ``normalize_usage`` reads no such count,
            # and a ``LooseJSON`` answer is never stored; this is the last guard.
            self.stats.errors += 1
            self.stats.unwritten += 1
            logger.warning("limpet cache: an answer that cannot be encoded was not stored: %s", exc)
            await self._not_stored(key)
            return None
        stored = await self.set_value(key, data, ttl, replacing=replacing)
        return (data, ttl) if stored else None

    async def _not_stored(self, key: str) -> None:
        """A newer value of ``key`` could not be stored: the one it replaces (a refresh's,
        say) must not be served in its place, here or in another process."""
        await self.delete(key)

    async def discard(self, key: str, error: CacheCorruptError) -> None:
        """Count ``key``'s entry as corrupt and delete it from every tier: for a fault found
        only after ``get()`` returned it (a stored stream that does not replay)."""
        self.stats.corrupt += 1
        logger.warning("limpet cache: corrupt entry deleted: %s", error)
        await self.delete(key)

    async def delete(self, key: str) -> None:
        self._begin_change(key)
        try:
            for index in range(len(self.tiers)):
                await self._delete_from(index, key)
        finally:
            self._end_change(key)

    async def clear(self) -> None:
        for changes in self._changes:
            changes.begin_clear()
        try:
            for index, tier in enumerate(self.tiers):
                try:
                    await tier.clear()
                except CacheUnavailableError as exc:
                    self._fault(index, exc)
        finally:
            for changes in self._changes:
                changes.end_clear()

    async def aclose(self) -> None:
        """Close every tier (the tiered cache owns them)."""
        for tier in self.tiers:
            await tier.aclose()

    async def _set_in(self, index: int, key: str, data: bytes, ttl: float) -> None:
        try:
            await self.tiers[index].set(key, data, ttl)
        except CacheUnavailableError as exc:
            self.stats.unwritten += 1
            self._fault(index, exc)

    async def flush(self) -> None:
        """Wait until the writes each tier queued have been sent (or have failed)."""
        for tier in self.tiers:
            if isinstance(tier, Flushable):
                await tier.flush()

    async def _delete_from(self, index: int, key: str) -> None:
        try:
            await self.tiers[index].delete(key)
        except CacheUnavailableError as exc:
            self._fault(index, exc)

    def _fault(self, index: int, exc: CacheUnavailableError) -> None:
        self.stats.errors += 1
        if not self._failing[index]:
            self._failing[index] = True
            logger.warning("limpet cache: tier %d unavailable, falling through: %s", index, exc)

    def _recovered(self, index: int) -> None:
        self._failing[index] = False
        logger.info("limpet cache: tier %d is back", index)

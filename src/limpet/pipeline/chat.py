"""``complete()``'s pipeline past the request stage: key → lookup → flight → upstream →
account → store → result.

The hit path (in-process tiers, nothing awaited that could yield) is ``hit()``; the rest
is ``complete()``. A flight is shared by every caller of its flight key (the cache key,
and under ``cache_scope="namespace"`` the call's credential scope: ``Keying.flight_key``):
it sends its leader's headers, and its leader's deadline is the one that cuts retries
short (a waiter bounds its own wait, and may retry once on a retryable failure).
"""

from __future__ import annotations

from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING

from limpet.cache.base import CacheEntry
from limpet.cache.tiered import TieredCache
from limpet.errors import APIError, CacheCorruptError
from limpet.flight.local import SingleFlight
from limpet.flight.shared import RedisFlight, Shared, kept
from limpet.http.retry import should_retry
from limpet.http.transport import Transport
from limpet.models import CacheStatus, Completion
from limpet.pipeline.calls import Call
from limpet.pipeline.completions import completion_of, storable
from limpet.pipeline.exchanges import JsonExchange
from limpet.pipeline.keying import Keying
from limpet.pipeline.keys import looks_large
from limpet.pipeline.owned import frozen_body, owned_body, owned_large_body, thawed_body
from limpet.pipeline.request import Request
from limpet.pipeline.upstream import Upstream

if TYPE_CHECKING:
    from limpet.pipeline.stream_flights import StreamFlights

# A flight's result: the entry, how it was found when not by this flight's own upstream
# call (HIT: in the cache after all; COALESCED: another process's call), and for a HIT the
# tier that answered (every caller given it counts its hit there).
Filled = tuple[CacheEntry, CacheStatus | None, int | None]


class ChatPipeline:
    """The stages of one ``complete()`` call, wired for one Client."""

    __slots__ = (
        "_cache",
        "_exchange",
        "_flight",
        "_read_now",
        "_reading",
        "_shared",
        "_upstream",
        "keying",
        "streams",
    )

    def __init__(
        self,
        *,
        cache: TieredCache | None,
        keying: Keying,
        upstream: Upstream,
        transport: Transport,
        flight: SingleFlight[Filled] | None,
        shared: RedisFlight[Filled] | None,
    ) -> None:
        self._cache = cache
        self.keying = keying
        self._upstream = upstream
        self._exchange = JsonExchange(transport)
        self._flight = flight
        self._shared = shared
        # Tiers ``hit()`` reads: tier 0 when it reads without awaiting, else none.
        self._read_now = 1 if cache is not None and cache.readable_now else 0
        self._reading: set[str] = set()  # keys a caller is reading past tier 0 now
        #: ``stream()``'s flights, whose running streams a ``complete()`` of the same
        #: request joins (wired by ``Pipelines``).
        self.streams: StreamFlights | None = None

    @property
    def coalescing(self) -> bool:
        """True when concurrent identical misses share one upstream call."""
        return self._flight is not None

    @property
    def shared_flight(self) -> RedisFlight[Filled] | None:
        """The cross-process flight, when the cache has a tier that offers leases."""
        return self._shared

    def keyed(self, request: Request) -> bool:
        """Whether ``request`` needs a key: it may use the cache, or join a flight."""
        decision = request.decision
        return decision.uses_cache or (decision.coalesce and self._flight is not None)

    def hit(self, request: Request) -> Completion | None:
        """The key stage without I/O and a look in tier 0 when it reads without awaiting
        (``TieredCache.get_now``): the answer when it holds it. A plain function, so it
        never yields to the event loop (``aclose()`` never finds it half-way)."""
        if not self.keyed(request):
            return None
        key = request.key = self.keying.now(
            request.body, request.headers, request.text_chars, request.tenant
        )
        if key is None:
            return None
        store = self._cache
        try:
            entry = store.get_now(key) if store is not None and request.decision.read else None
        except CacheCorruptError:
            # ``complete()`` keys the request again and reads from tier 0, which counts
            # the corrupt entry and deletes it (awaiting the tier).
            request.key = None
            return None
        if entry is None:  # the flight key is a miss's: a hit pays for none
            request.flight_key = self.keying.flight_key(key, request.headers)
            return None
        return completion_of(entry, CacheStatus.HIT, key, 0)

    def complete(self, request: Request, call: Call) -> Awaitable[Completion]:
        """Everything past the hit path: the key when the model's generation had to be
        read first, the tiers not read yet, the flight, upstream, the store.

        A shared tier is read before the flight: a hit there needs no flight, and a miss
        enters it, whose first step reads every tier again (another flight may have just
        landed), so N concurrent identical misses still make one upstream call. (A plain
        function: with nothing left to read here it hands over the flight stage's
        coroutine, with no coroutine of its own alive for the whole call.)"""
        key = request.key
        if key is None:  # keyed from this copy (a large one is copied as it is keyed)
            if not looks_large(request.body, request.text_chars):
                request.body = owned_body(request.body)
            if self.keyed(request):
                return self._read(request, call, None, 0)  # tier 0 was not read either
            return self._flown(request, None, call)
        if self._nothing_to_read(request, key, self._read_now):
            request.body = owned_body(request.body)
            return self._flown(request, key, call)
        # Keyed in this step (``hit()``): the copy is taken in this step too, and parsed
        # only when no tier holds the answer.
        return self._read(request, call, key, self._read_now, frozen_body(request.body))

    def _nothing_to_read(self, request: Request, key: str | None, start: int) -> bool:
        """Whether ``request`` goes straight to the flight stage: no key or no cache to
        read, every tier read already (the flight reads them all again), or another
        caller reading or flying the key now (in a storm, one read of a key at a time per
        process: the others go to the flight, whose read is the one that counts)."""
        store, decision = self._cache, request.decision
        if key is None or store is None or not decision.read:
            return True
        flight = self._flight if decision.coalesce else None
        return flight is not None and (
            start >= len(store.tiers)
            or key in self._reading
            or flight.flying(request.flight_key or key)
        )

    async def _read(
        self,
        request: Request,
        call: Call,
        key: str | None,
        start: int,
        frozen: bytes | None = None,
    ) -> Completion:
        """The key stage when it must await, and the lookup stage past the tiers read,
        from ``start`` (here, not in a coroutine of its own: the read resumes through
        every coroutine above it); then the flight stage, with the body ``frozen`` when
        its copy was taken as bytes (``frozen_body``). A miss is counted by the flight's
        own read, when there is one; while it reads, identical callers go to the flight
        instead."""
        if key is None:
            if looks_large(request.body, request.text_chars):
                request.body = await owned_large_body(request.body)
            key = request.key = await self.keying.of(request.body, request.headers, request.tenant)
            request.flight_key = self.keying.flight_key(key, request.headers)
        store = self._cache
        if key is not None and store is not None and not self._nothing_to_read(request, key, start):
            if self._flight is None or not request.decision.coalesce:
                found = await store.get(key, start=start)
            else:
                self._reading.add(key)
                try:
                    found = await store.get(key, start=start, count_miss=False)
                finally:
                    self._reading.discard(key)
            if found is not None:
                return completion_of(found[0], CacheStatus.HIT, key, found[1])
        if frozen is not None:
            request.body = thawed_body(frozen)
        return await self._flown(request, key, call)

    async def _flown(self, request: Request, key: str | None, call: Call) -> Completion:
        """The flight stage: one upstream call per key among concurrent callers."""
        flight = self._flight
        if key is None:
            entry = await self._upstream.call(request, self._exchange, call)
            return completion_of(entry, CacheStatus.BYPASS, None)
        if flight is not None and request.decision.coalesce:
            call.waiting_for = "an identical call in flight"
            flight_key = request.flight_key or key
            streams = self.streams
            streamed = streams.answer_of(flight_key) if streams is not None else None
            if streamed is not None:  # a stream of this request: its answer
                try:
                    answer = await streamed
                except APIError as exc:
                    if not should_retry(exc):
                        raise  # else this call's own flight, as a promoted waiter's
                else:
                    if answer is not None:  # else cut short: this call's own flight
                        entry, claimed = answer
                        if not claimed:
                            return completion_of(entry, CacheStatus.COALESCED, key)
                        return completion_of(entry, self._own_status(), key)
            # The claim of the flight's own upstream answer: its leader's, or the first
            # waiter's when the leader left (``SingleFlight``); the others shared it.
            filling = flight.do(flight_key, self._fill, request, key, call)
            (entry, source, tier), claimed = await filling
            if source is not None:
                return completion_of(entry, source, key, tier)
            if not claimed:
                return completion_of(entry, CacheStatus.COALESCED, key)
        else:
            entry = await self._upstream.call(request, self._exchange, call)
            await self._store(request, key, entry)
        return completion_of(entry, self._own_status(), key)

    def _own_status(self) -> CacheStatus:
        """How a keyed call whose own upstream answer it got was served."""
        return CacheStatus.MISS if self._cache is not None else CacheStatus.BYPASS

    async def _fill(self, request: Request, key: str, call: Call) -> Filled:
        """This process's one call for ``key``: a look in every tier (another flight may
        have just landed), then, when another process shares the cache, a cross-process
        flight, else upstream."""
        cache, decision = self._cache, request.decision
        if cache is not None and decision.read:
            found = await cache.get(key)
            if found is not None:
                return found[0], CacheStatus.HIT, found[1]
        streams, flight_key = self.streams, request.flight_key or key
        streamed = streams.answer_of(flight_key) if streams is not None else None
        if streamed is not None:  # a stream of it started meanwhile (a retry, say): its answer
            answer = await streamed
            if answer is not None:
                # Its claim, when the stream's reader left it: the flight's own answer.
                entry, claimed = answer
                return entry, None if claimed else CacheStatus.COALESCED, None
        shared = self._shared
        if shared is None or cache is None or not decision.coalesce:
            entry = await self._upstream.call(request, self._exchange, call)
            await self._store(request, key, entry)
            return entry, None, None
        return await self._fill_shared(request, key, call, cache, shared)

    async def _fill_shared(
        self,
        request: Request,
        key: str,
        call: Call,
        cache: TieredCache,
        shared: RedisFlight[Filled],
    ) -> Filled:
        """``_fill`` through the cross-process flight: one process calls upstream and
        stores, the others read what it stored."""
        refreshing = not request.decision.read

        async def lead() -> tuple[Filled, Shared, float]:
            entry = await self._upstream.call(request, self._exchange, call)
            if not storable(entry):  # this answer: the next may be (one follower takes over)
                return (entry, None, None), None, 0.0
            data, entry_ttl = kept(await cache.set(key, entry, replacing=refreshing))
            return (entry, None, None), data, entry_ttl

        async def read(count_miss: bool = True) -> Filled | None:
            found = await cache.get(key, count_miss=count_miss)
            return None if found is None else (found[0], CacheStatus.COALESCED, None)

        filled, _ = await shared.do(key, lead, read, recheck=partial(read, count_miss=False))
        return filled

    async def _store(self, request: Request, key: str, entry: CacheEntry) -> None:
        """The store stage: a storable answer is written to every tier. Apart from the
        upstream call rather than around it, so that it is no coroutine of the call's."""
        decision = request.decision
        if self._cache is not None and decision.write and storable(entry):
            # A refresh (written, not read) replaces what the tiers hold.
            await self._cache.set(key, entry, replacing=not decision.read)

    async def aclose(self) -> None:
        """Stop the in-process flights still running (``aclose()``, after its grace)."""
        if self._flight is not None:
            await self._flight.aclose()

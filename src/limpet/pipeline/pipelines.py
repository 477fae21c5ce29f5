"""The three pipelines of a Client (``complete()``, ``stream()``, ``embed()``) over stages
they share: one key stage, one upstream stage with one accountant, one recorder, one set
of running calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from limpet.cache.tiered import TieredCache
from limpet.config import FlightConfig
from limpet.flight.local import SingleFlight
from limpet.flight.shared import RedisFlight
from limpet.flight.store import FlightStore
from limpet.http.retry import should_retry
from limpet.http.retrying import never_sent
from limpet.http.transport import Transport
from limpet.observe.recorder import Recorder
from limpet.observe.stats import Stats
from limpet.pipeline.account import Accounting
from limpet.pipeline.calls import RunningCalls
from limpet.pipeline.chat import ChatPipeline, Filled
from limpet.pipeline.embed_calls import EmbedCalls
from limpet.pipeline.embeddings import Embedder
from limpet.pipeline.keying import Keying
from limpet.pipeline.stream import StreamCalls
from limpet.pipeline.stream_flights import StreamFlights
from limpet.pipeline.upstream import Upstream
from limpet.providers.pricing import PriceTable
from limpet.providers.prompt_cache import CacheControlConfig
from limpet.routing.affinity import affinity_scope, affinity_store_for
from limpet.routing.base import Router
from limpet.routing.sticky import StickyRouter


class Pipelines:
    """``chat``, ``streams`` and ``embeds``, wired for one Client.

    Args:
        leases: the cross-process flight store of the cache's shared tier, when it has
            one and coalescing is on.
        mark: marks what is sent with ``cache_control`` (``auto_cache_control``), or None.
        marking: the ``CacheControlConfig`` ``mark`` marks by, whose learned minimums a
            sticky router teaches; None when nothing is marked.
        closed: tells whether the Client is closed.
    """

    __slots__ = ("_accounting", "_shared", "chat", "embeds", "stream_flights", "streams")

    def __init__(
        self,
        *,
        cache: TieredCache | None,
        router: Router,
        transport: Transport,
        prices: PriceTable,
        stats: Stats,
        recorder: Recorder,
        keying: Keying,
        calls: RunningCalls,
        closed: Callable[[], bool],
        coalesce: bool,
        leases: FlightStore | None,
        flight: FlightConfig | None,
        mark: Callable[[dict[str, Any]], dict[str, Any]] | None,
        marking: CacheControlConfig | None,
        max_embed_inputs: int,
    ) -> None:
        _wire_shared_parts(router, cache, transport, stats, keying, marking)

        self._shared: list[RedisFlight[Any]] = []  # each stopped at aclose()

        def shared() -> Any:
            if leases is None:
                return None
            # Under cache_scope="namespace" (no credential in the keys) the callers of
            # one key may send different credentials.
            self._shared.append(
                RedisFlight(leases, flight, shared_credentials=not keying.credential)
            )
            return self._shared[-1]

        self._accounting = Accounting(prices, spent=recorder.spent)
        transport.billed = self._accounting.billed
        upstream = Upstream(router, self._accounting, stats, mark, keying)
        local: SingleFlight[Filled] | None = (
            SingleFlight(retry_if=should_retry, free_if=never_sent) if coalesce else None
        )
        self.chat = ChatPipeline(
            cache=cache,
            keying=keying,
            upstream=upstream,
            transport=transport,
            flight=local,
            shared=shared(),
        )
        self.stream_flights = StreamFlights(
            cache=cache,
            transport=transport,
            upstream=upstream,
            shared=shared(),
            coalesce=coalesce,
            answers=local,
        )
        self.chat.streams = self.stream_flights  # one upstream call per request, either way
        self.streams = StreamCalls(
            flights=self.stream_flights,
            calls=calls,
            keying=keying,
            recorder=recorder,
            closed=closed,
        )
        embedder = Embedder(
            cache=cache,
            transport=transport,
            router=router,
            stats=stats,
            accounting=self._accounting,
            coalesce=coalesce,
            shared=shared(),
            max_inputs=max_embed_inputs,
        )
        self.embeds = EmbedCalls(
            embedder=embedder, keying=keying, calls=calls, recorder=recorder, closed=closed
        )

    async def settle(self, seconds: float) -> None:
        """Give what callers left running upstream up to ``seconds`` to end: an embedding
        request whose caller's deadline passed, a stream let end after its last reader
        left. It is paid for, and what it brings is stored (the Client's ``aclose()``,
        with what is left of its grace)."""
        running: list[asyncio.Future[Any]] = [
            *self.embeds.embedder.running,
            *self.stream_flights.running,
        ]
        if running and seconds > 0:
            await asyncio.wait(running, timeout=seconds)

    async def aclose(self) -> None:
        """Stop what the callers left running (a stream held open but not read, shared
        calls), and wait for it to stop: the Client's ``aclose()``, after its grace."""
        await self.stream_flights.aclose()
        await self.embeds.embedder.aclose()
        await self.chat.aclose()
        await self._accounting.aclose()  # told before the fleet's counters are flushed
        # Then the releases sent again in the background, before the cache closes.
        for shared in self._shared:
            await shared.aclose()


def _wire_shared_parts(
    router: Router,
    cache: TieredCache | None,
    transport: Transport,
    stats: Stats,
    keying: Keying,
    marking: CacheControlConfig | None,
) -> None:
    """Stats read the tiers' and admission's figures; a sticky router shares its affinity
    map through the Redis tier, when there is one, with the Clients of its scope alone,
    ranks by what admission sees, and learns minimums by the Client's own marking (its
    tables: learning and marking never disagree)."""
    if cache is not None:
        stats.attach(cache)
    stats.admissions = transport.admissions
    if isinstance(router, StickyRouter):
        if router.store is None:
            scope = affinity_scope(keying.namespace, keying.credential)
            router.use_store(affinity_store_for(cache.tiers if cache is not None else (), scope))
        router.use_admissions(transport.admissions)
        router.use_marking(marking)

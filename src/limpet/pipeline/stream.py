"""``CompletionStream``: what ``Client.stream()`` returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, Protocol

from limpet.cache.base import CacheEntry
from limpet.cache.tiered import TieredCache
from limpet.errors import APIError, CacheCorruptError, ClientClosedError
from limpet.flight.broadcast import Broadcast
from limpet.flight.shared import RedisFlight
from limpet.http.chunk_assembly import StreamAssembler
from limpet.http.chunk_replay import replay_chunks
from limpet.http.chunks import StreamChunk, with_stream_usage
from limpet.http.retry import should_retry
from limpet.http.transport import Transport
from limpet.models import CacheStatus, Completion
from limpet.observe.stats import Stats
from limpet.pipeline.completions import completion_of, storable
from limpet.pipeline.policy import CacheDecision
from limpet.providers.usage import parse_usage
from limpet.routing.sticky import Router

__all__ = ["CompletionStream", "StreamFlights"]


class CompletionStream:
    """The chunks of one streamed completion; ``async for`` it, or ``async with`` it to
    stop early. Nothing is sent until the first chunk is asked for.

    After the last chunk, ``completion`` holds the assembled ``Completion`` with usage,
    cost and cache status, every choice whole. Only what that needs is held while
    streaming: a stream that is neither stored nor shared (``cache="bypass"``, or a
    sampled request) keeps neither its raw chunks nor a replay buffer, only the
    assembled answer.

    Stopping early (``aclose()``, leaving ``async with``, or ``break`` followed by
    ``aclose()``) releases the stream; other callers sharing the same upstream stream are
    not affected.

    Example:
        >>> async with client.stream(model=m, messages=msgs, temperature=0) as stream:
        ...     async for chunk in stream:
        ...         print(chunk.content or "", end="")
        >>> stream.completion.usage
    """

    __slots__ = ("_chunks", "_open", "completion")

    def __init__(
        self,
        open_chunks: Callable[[CompletionStream], AsyncGenerator[dict[str, Any], None]],
    ) -> None:
        self._open = open_chunks
        self._chunks: AsyncGenerator[dict[str, Any], None] | None = None
        self.completion: Completion | None = None

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._chunks is None:
            self._chunks = self._open(self)
        return StreamChunk(await self._chunks.__anext__())

    async def aclose(self) -> None:
        """Stop reading; idempotent."""
        if self._chunks is not None:
            await self._chunks.aclose()

    async def __aenter__(self) -> CompletionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class StreamFlights:
    """Streams through the cache: a hit is replayed; concurrent identical misses share one
    upstream stream, each reader getting every chunk from the first, then the live tail.

    The upstream stream is read by a task of its own, so it goes on while any reader
    remains, whoever started it; it is cancelled when the last reader leaves. The
    assembled answer is stored only when the stream ends cleanly; a failure reaches
    every reader and stores nothing.
    """

    __slots__ = (
        "_cache",
        "_entry",
        "_flights",
        "_outgoing",
        "_priced",
        "_router",
        "_running",
        "_shared",
        "_stats",
        "_transport",
    )

    def __init__(
        self,
        *,
        cache: TieredCache | None,
        transport: Transport,
        shared: RedisFlight[CacheEntry] | None,
        router: Router,
        outgoing: Callable[[dict[str, Any]], dict[str, Any]],
        entry: MakeEntry,
        priced: Callable[[Completion, dict[str, Any]], Completion],
        stats: Stats,
    ) -> None:
        self._cache = cache
        self._transport = transport
        self._shared = shared
        self._router = router
        self._outgoing = outgoing
        self._entry = entry
        self._priced = priced
        self._stats = stats
        self._flights: dict[str, _StreamFlight] = {}
        self._running: set[_StreamFlight] = set()

    async def chunks(
        self,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        key: str | None,
        sink: CompletionStream,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks for one reader; sets ``sink.completion`` after the last one (the
        Client counts it). An upstream stream this reader starts sends ``headers``, and
        starts no retry that could not end before ``deadline`` (event-loop time)."""
        cache = self._cache
        if key is not None and cache is not None and decision.read:
            found = await cache.get(key)
            if found is not None:
                entry = found[0]
                replay = await _replayable(cache, key, entry)
                if replay is not None:
                    for chunk in replay:
                        yield chunk
                    sink.completion = completion_of(entry, CacheStatus.HIT, key)
                    return
        flight = self._flights.get(key) if key is not None and decision.coalesce else None
        led = flight is None
        if flight is None:
            flight = _StreamFlight(shared=key is not None and decision.coalesce)
            flight.task = asyncio.get_running_loop().create_task(
                self._produce(flight, body, decision, ttl, key, headers, deadline)
            )
            self._running.add(flight)
            flight.task.add_done_callback(partial(self._ended, flight))
            if key is not None and decision.coalesce:
                self._flights[key] = flight
                flight.task.add_done_callback(partial(self._land, key, flight))
        flight.readers += 1
        try:
            async for chunk in flight.broadcast.items():
                yield chunk
        finally:
            flight.readers -= 1
            if flight.readers == 0 and not flight.task.done():
                if key is not None:
                    self._land(key, flight)
                flight.task.cancel()
        result = flight.broadcast.result
        assert result is not None
        entry, status = result
        if status is None:
            if not led:
                status = CacheStatus.COALESCED
            elif key is not None and cache is not None and decision.uses_cache:
                status = CacheStatus.MISS
            else:
                status = CacheStatus.BYPASS
        completion = completion_of(entry, status, key, copy=not led)
        if led and status in (CacheStatus.MISS, CacheStatus.BYPASS):
            completion = self._priced(completion, body)
        sink.completion = completion

    async def aclose(self) -> None:
        """Stop every upstream stream still running: its readers get
        ``ClientClosedError``; returns once the streams have let go (the Client's
        ``aclose()``, after its grace period)."""
        flights = list(self._running)
        for flight in flights:
            if not flight.broadcast.finished:
                flight.broadcast.fail(ClientClosedError("Client closed while streaming"))
            if not flight.task.cancelling():  # once: a second one would cut its clean-up
                flight.task.cancel()
        if flights:
            await asyncio.wait([flight.task for flight in flights])

    def _land(self, key: str, flight: _StreamFlight, _task: object = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _ended(self, flight: _StreamFlight, _task: object) -> None:
        self._running.discard(flight)

    async def _produce(
        self,
        flight: _StreamFlight,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        key: str | None,
        headers: Mapping[str, str] | None,
        deadline: float | None,
    ) -> None:
        broadcast = flight.broadcast
        cache = self._cache
        store = cache is not None and key is not None and decision.write
        try:

            async def lead() -> tuple[CacheEntry, bytes | None, float]:
                # The raw chunks are kept only for the stored entry's replay.
                assembler = StreamAssembler(chunking=store)
                entry = await self._stream_upstream(
                    body, ttl, broadcast, assembler, headers, deadline
                )
                stored = None
                if cache is not None and key is not None and store and storable(entry):
                    stored = await cache.set(key, entry)
                data, entry_ttl = stored if stored is not None else (None, 0.0)
                return entry, data, entry_ttl

            shared = self._shared
            if shared is not None and cache is not None and key is not None and decision.coalesce:

                async def read() -> CacheEntry | None:
                    found = await cache.get(key)
                    return None if found is None else found[0]

                entry, led = await shared.do(key, lead, read)
                if not led:  # another process streamed it: replay its entry, unless corrupt
                    replay = await _replayable(cache, key, entry)
                    if replay is not None:
                        for chunk in replay:
                            broadcast.push(chunk)
                        broadcast.finish((entry, CacheStatus.COALESCED))
                        return
                    entry, _, _ = await lead()
            else:
                entry, _, _ = await lead()
            broadcast.finish((entry, None))
        except asyncio.CancelledError:
            if not broadcast.finished:  # aclose() may have told the readers why already
                broadcast.fail(asyncio.CancelledError())
            raise
        except BaseException as exc:
            broadcast.fail(exc)

    async def _stream_upstream(
        self,
        body: dict[str, Any],
        ttl: float,
        broadcast: Broadcast[dict[str, Any], Any],
        assembler: StreamAssembler,
        headers: Mapping[str, str] | None,
        deadline: float | None,
    ) -> CacheEntry:
        """Stream from the first endpoint that opens (failing over before the first chunk),
        pushing chunks as they come; returns the assembled entry."""
        # Usage is asked for in what is sent, never in the key: OpenAI-style servers send
        # none in a stream otherwise, and the call would be recorded as free.
        sent = with_stream_usage(self._outgoing(body))
        route = await self._router.route(sent)
        ranked = route.endpoints
        for index, endpoint in enumerate(ranked):
            self._stats.upstream_calls += 1
            chunks = self._transport.stream(
                endpoint, route.body, headers=headers, deadline=deadline
            )
            try:
                with route.attempt(endpoint) as attempt:
                    async for chunk in chunks:
                        assembler.add(chunk)
                        broadcast.push(chunk)
                    answer = assembler.completion()
                    attempt.served(parse_usage(answer.get("usage")))
            except APIError as exc:
                if assembler.chunks or index + 1 == len(ranked) or not should_retry(exc):
                    raise
                continue
            finally:
                await chunks.aclose()
            return await self._entry(
                answer, endpoint.name, body, route.body, ttl, assembler.chunking()
            )
        raise AssertionError("unreachable: the last endpoint's failure is raised")


async def _replayable(
    cache: TieredCache, key: str, entry: CacheEntry
) -> list[dict[str, Any]] | None:
    """The chunks that replay ``entry``, or None when its stored stream is corrupt: then
    it is counted and deleted, and the caller goes upstream. Read whole before the first
    chunk is sent, so a reader never gets half a replay."""
    try:
        return list(replay_chunks(entry.body, entry.stream))
    except CacheCorruptError as exc:
        await cache.discard(key, exc)
        return None


class MakeEntry(Protocol):
    """Builds the cache entry of an upstream answer (usage, cost); the Client's."""

    def __call__(
        self,
        answer: dict[str, Any],
        endpoint: str,
        body: dict[str, Any],
        sent: dict[str, Any],
        ttl: float,
        stream: bytes | None = None,
    ) -> Awaitable[CacheEntry]: ...


class _StreamFlight:
    __slots__ = ("broadcast", "readers", "task")

    def __init__(self, *, shared: bool) -> None:
        # A flight nobody else can join has one reader: it holds only the unread chunks.
        self.broadcast: Broadcast[dict[str, Any], tuple[CacheEntry, CacheStatus | None]] = (
            Broadcast(replay=shared)
        )
        self.readers = 0
        self.task: asyncio.Task[None]

"""Streams through the cache: replay, one upstream stream per key shared by its readers,
the store stage once it ends cleanly."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING, Any

from limpet.cache.base import CacheEntry
from limpet.cache.tiered import TieredCache
from limpet.errors import APIError, ClientClosedError
from limpet.flight.broadcast import Broadcast
from limpet.flight.local import SingleFlight
from limpet.flight.shared import RedisFlight, Shared, kept
from limpet.http.chunk_assembly import StreamAssembler
from limpet.http.chunk_replay import replay_chunks
from limpet.http.chunks import Finishes, choices_asked, usage_declined, without_usage
from limpet.http.retry import should_retry
from limpet.http.retrying import never_sent
from limpet.http.transport import Transport
from limpet.models import CacheStatus, Completion, json_copy
from limpet.pipeline.calls import Call
from limpet.pipeline.completions import completion_of, storable
from limpet.pipeline.exchanges import StreamExchange
from limpet.pipeline.request import Request
from limpet.pipeline.stream_replays import replayable, replayed
from limpet.pipeline.upstream import Upstream

if TYPE_CHECKING:
    from limpet.pipeline.chat import Filled
    from limpet.pipeline.stream import CompletionStream

#: Seconds a reader that closes its stream past the usage chunk (everything but [DONE]
#: read) waits for the upstream stream's end, so that the answer is stored and counted as
#: its own, paid for as it was, rather than cut short and counted nowhere.
TAIL_GRACE = 1.0


class StreamFlights:
    """Streams through the cache: a hit is replayed; concurrent identical misses share one
    upstream stream, each reader getting every chunk from the first, then the live tail.

    The upstream stream is read by a task of its own, so it goes on while any reader
    remains, whoever started it; it is cancelled when the last reader leaves, unless a
    reader of the same key is still looking in the cache (it joins on a miss). The
    assembled answer is stored only when the stream ends cleanly and whole (every choice
    asked for finished: ``StreamExchange.whole``); a failure reaches
    every reader and stores nothing (a reader that joined, and had nothing of it yet,
    may start it again once, as a waiter of ``complete()``'s flight may retry).
    Upstream, it is the same stage as ``complete()``'s, with a ``StreamExchange`` for the
    wire.

    ``complete()`` and ``stream()`` calls of one request share one upstream call too: a
    stream that would start while ``complete()``'s flight of its key runs (``answers``)
    waits for that answer and replays it, and a ``complete()`` call joins a running
    stream of its key (``answer_of``).
    """

    __slots__ = (
        "_answers",
        "_cache",
        "_coalesce",
        "_flights",
        "_looking",
        "_running",
        "_shared",
        "_transport",
        "_upstream",
    )

    def __init__(
        self,
        *,
        cache: TieredCache | None,
        transport: Transport,
        upstream: Upstream,
        shared: RedisFlight[CacheEntry] | None,
        coalesce: bool = True,
        answers: SingleFlight[Filled] | None = None,
    ) -> None:
        self._cache = cache
        self._answers = answers  # complete()'s flights, by key
        self._transport = transport
        self._upstream = upstream
        self._shared = shared
        self._coalesce = coalesce
        self._flights: dict[str, _StreamFlight] = {}
        self._running: set[_StreamFlight] = set()
        # Readers looking in the cache now, by key, that would join its stream on a miss.
        self._looking: dict[str, int] = {}

    def keyed(self, request: Request) -> bool:
        """Whether ``request`` needs a key: it may use the cache, or join a stream."""
        decision = request.decision
        return (self._cache is not None and decision.uses_cache) or self._joins(request)

    async def chunks(
        self, request: Request, sink: CompletionStream, call: Call
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The chunks for one reader; sets ``sink.completion`` after the last one (the
        Client counts it). An upstream stream this reader starts sends ``call``'s headers,
        and starts no retry that could not end before its deadline. A reader that joined
        another's stream, and got none of it when it failed retryably (say, queued for
        admission past its starter's deadline), starts it again, or joins the one another
        such reader started: once, as a waiter of ``complete()``'s flight may. A reader
        who declined usage (``stream_options.include_usage: false``) gets none of it in
        its chunks, though the stream asked for it for the cache and the others."""
        cache, key, decision = self._cache, request.key, request.decision
        # Streams are joined by flight key: under ``cache_scope="namespace"`` one per
        # credential (``Keying.flight_key``), as ``complete()``'s flights are.
        flight_key = request.flight_key or key
        joins = key is not None and self._joins(request)
        declined = usage_declined(request.body)
        asked = choices_asked(request.body)
        if key is not None and cache is not None and decision.read:
            found = await self._look(cache, key, flight_key, joins)
            if found is not None:
                entry, replay, tier = found
                hit = completion_of(entry, CacheStatus.HIT, key, tier)
                async with aclosing(replayed(replay, asked, declined, sink, hit)) as replaying:
                    async for chunk in replaying:
                        yield chunk
                return
        failed: _StreamFlight | None = None
        answering = self._answering(flight_key) if joins else None
        retried = False
        while answering is not None:  # complete()'s flight of this request: its answer
            answered = await _answered(answering)
            if answered is not None:
                (entry, source, hit_tier), claimed = answered
                if not entry.servable:  # served to its caller, never stored: nor replayed
                    break
                # An answer read from the cache may hold a stored stream that does not
                # replay: counted and deleted, and this reader streams afresh. (With no
                # cache the answer is complete()'s own, never read from one.)
                if cache is None or key is None:
                    chunks: list[dict[str, Any]] | None = list(
                        replay_chunks(entry.body, entry.stream)
                    )
                else:
                    chunks = await replayable(cache, key, entry)
                if chunks is None:
                    break
                if source is None:  # its own upstream answer: shared, or this call's claim
                    source = self._own_status(request) if claimed else CacheStatus.COALESCED
                answer = completion_of(entry, source, key, hit_tier)
                shared = replayed(chunks, asked, declined, sink, answer, copied=True)
                async with aclosing(shared) as replaying:
                    async for chunk in replaying:
                        yield chunk
                return
            # It failed in a way a waiter may retry: a waiter of it may lead a new one
            # already (this reader joins it, once), else this reader streams afresh.
            if retried:
                break
            retried = True
            answering = self._answering(flight_key)
        while True:
            flight = self._flights.get(flight_key) if flight_key is not None and joins else None
            led = flight is None or flight is failed  # a failed one lands a moment later
            if led:
                flight = self._start(request, call, joins)
                flight.leader = weakref.ref(sink)
            assert flight is not None
            flight.readers += 1
            copied, given, ended = flight.copied, False, False
            last: dict[str, Any] | None = None
            finishes = Finishes(asked)  # the choices asked for this reader saw finish
            try:
                async for chunk in flight.broadcast.items():
                    given, last = True, chunk
                    sink.coalesced = _paid_by_another(flight, led)
                    finishes.see(chunk)
                    shown = without_usage(chunk) if declined else chunk
                    if shown is not None:
                        yield json_copy(shown) if copied else shown
                ended = True
                break
            except APIError as exc:
                again = failed is None or never_sent(exc)  # once, or never sent at all
                if led or given or not again or not should_retry(exc):
                    raise
                failed = flight
            except GeneratorExit:
                # Closed by its reader (not cancelled) once every choice asked for
                # finished (``if chunk.finish_reason: break``) or the usage chunk came
                # (one of usage alone: some servers send usage on every chunk): at most
                # the usage and [DONE] are left, so the answer is whole, paid for and
                # its reader's; the upstream ends it (stored, and counted as this
                # reader's) rather than being cut for want of a reader.
                if _all_in(last, finishes) and not _cancelling() and await _ended_soon(flight):
                    sink.completion = self._completion(request, flight, led)
                raise
            except asyncio.CancelledError:
                # Stopped as it waited for a chunk by its stream's aclose() from another
                # task (a stop button), and cancelled by nothing else: its reader closed
                # it, as above. A caller cancelled unwinds at once, and is counted so.
                if _all_in(last, finishes) and sink._stopping() and await _ended_soon(flight):
                    sink.completion = self._completion(request, flight, led)
                raise
            finally:
                if led and not ended and not flight.claimed:
                    flight.leader_left = True  # its claim is the next reader's to end
                flight.readers -= 1
                if flight.readers == 0 and not self._looked_for(flight_key, flight):
                    self._drop(flight_key, flight, tail=not ended and _all_in(last, finishes))
        if not led:
            _left_if_gone(flight)
        sink.completion = self._completion(request, flight, led)

    def answer_of(self, key: str) -> Awaitable[tuple[CacheEntry, bool] | None] | None:
        """The answer of the upstream stream running for flight key ``key``, for a
        ``complete()`` call
        of the same request (a reader of it until it ends, so it keeps the stream going),
        and whether its claim is this call's (``_claims``); None when no stream of ``key``
        runs that others may join. Awaited, None when the stream ended before it was whole
        (the call then makes its own).

        Raises (when awaited):
            APIError: the stream failed.
        """
        flight = self._flights.get(key)
        # One that ended is about to be forgotten, one being cut is no answer.
        if flight is None or flight.task.done() or flight.task.cancelling():
            return None
        return self._answer(key, flight)

    async def _answer(self, key: str, flight: _StreamFlight) -> tuple[CacheEntry, bool] | None:
        flight.readers += 1
        try:
            await asyncio.wait((flight.task,))  # its end, not each of its chunks
        finally:
            flight.readers -= 1
            if flight.readers == 0 and not self._looked_for(key, flight):
                self._drop(key, flight)
        broadcast = flight.broadcast
        if broadcast.error is not None:
            raise broadcast.error
        result = broadcast.result
        assert result is not None
        # A stream cut short is its readers' as it came, not an answer for complete().
        if not flight.whole:
            return None
        entry, status = result
        _left_if_gone(flight)
        return entry, status is None and self._claims(flight, led=False)

    def _answering(self, key: str | None) -> Awaitable[tuple[Filled, bool]] | None:
        """``complete()``'s flight of ``key``, when one runs and no stream of it does."""
        answers = self._answers
        if answers is None or key is None or key in self._flights:
            return None
        return answers.join(key)

    async def _look(
        self, cache: TieredCache, key: str, flight_key: str | None, joins: bool
    ) -> tuple[CacheEntry, list[dict[str, Any]], int] | None:
        """The cached entry of ``key``, its replay and the tier that held it, or None.
        While a reader that would join ``flight_key``'s upstream stream on a miss looks,
        that stream is kept even if its last reader leaves; it is dropped once nobody
        reads it nor looks."""
        looks = flight_key if joins else None
        if looks is not None:
            self._looking[looks] = self._looking.get(looks, 0) + 1
        try:
            found = await cache.get(key)
            replay = None if found is None else await replayable(cache, key, found[0])
        except BaseException:
            if looks is not None:
                self._looked(looks, joining=False)
            raise
        if looks is not None:
            self._looked(looks, joining=replay is None)
        return None if found is None or replay is None else (found[0], replay, found[1])

    def _looked(self, key: str, *, joining: bool) -> None:
        """A reader of ``key`` has looked in the cache: unless it joins ``key``'s upstream
        stream now, that stream is dropped when nobody reads it nor looks any more."""
        left = self._looking[key] - 1
        if left:
            self._looking[key] = left
            return
        del self._looking[key]
        flight = self._flights.get(key)
        if not joining and flight is not None and flight.readers == 0:
            self._drop(key, flight)

    def _looked_for(self, key: str | None, flight: _StreamFlight) -> bool:
        """Whether a reader of ``key`` is looking in the cache, and would join ``flight``
        on a miss."""
        return key is not None and key in self._looking and self._flights.get(key) is flight

    def _drop(self, key: str | None, flight: _StreamFlight, *, tail: bool = False) -> None:
        """Stop an upstream stream nobody reads: forgotten first, so that a newcomer
        starts afresh rather than joining a dying one. One whose answer is all in but
        its end (``tail``: its last reader left, cancelled say, once every choice
        finished or the usage came) gets ``TAIL_GRACE`` to end, joinable still: stored
        and accounted, as what was paid for, rather than cut for want of a reader. One
        the upstream has sent whole (its readers lagging behind: a proxy's relay) is
        left to be accounted and stored."""
        exchange = flight.exchange
        if flight.task.done() or (exchange is not None and exchange.received):
            return
        if tail:
            stop = asyncio.get_running_loop().call_later(TAIL_GRACE, self._cut_tail, key, flight)
            flight.task.add_done_callback(lambda _: stop.cancel())
            return
        if key is not None:
            self._land(key, flight)
        flight.task.cancel()

    def _cut_tail(self, key: str | None, flight: _StreamFlight) -> None:
        """A stream let end (``_drop``'s ``tail``) that has not in ``TAIL_GRACE``: cut
        (forgotten first, as ``_drop`` does), unless a reader joined it meanwhile (it is
        theirs then, dropped when they go)."""
        if not flight.readers:
            self._drop(key, flight)

    @property
    def running(self) -> tuple[asyncio.Task[None], ...]:
        """The upstream streams running now, read or not."""
        return tuple(flight.task for flight in self._running)

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

    def _joins(self, request: Request) -> bool:
        return self._coalesce and request.decision.coalesce

    def _stores(self, request: Request) -> bool:
        return self._cache is not None and request.key is not None and request.decision.write

    def _start(self, request: Request, call: Call, joins: bool) -> _StreamFlight:
        key = request.flight_key or request.key
        flight = _StreamFlight(shared=joins, copied=joins or self._stores(request))
        flight.task = asyncio.get_running_loop().create_task(self._produce(flight, request, call))
        self._running.add(flight)
        flight.task.add_done_callback(partial(self._ended, flight))
        if key is not None and joins:
            self._flights[key] = flight
            flight.task.add_done_callback(partial(self._land, key, flight))
        return flight

    def _claims(self, flight: _StreamFlight, *, led: bool) -> bool:
        """Whether a caller given ``flight``'s own upstream answer takes its one claim: the
        answer is this caller's own (a miss, with what it cost), not shared. The reader
        who started the stream claims it; when that reader left before the end, the
        first other caller to get the answer does, so an answer paid for is some caller's
        own whenever one gets it."""
        if flight.claimed or not (led or flight.leader_left):
            return False
        flight.claimed = True
        return True

    def _completion(self, request: Request, flight: _StreamFlight, led: bool) -> Completion:
        result = flight.broadcast.result
        assert result is not None
        entry, status = result
        key = request.key
        if status is None:
            own = self._claims(flight, led=led)
            status = self._own_status(request) if own else CacheStatus.COALESCED
        return completion_of(entry, status, key)

    def _own_status(self, request: Request) -> CacheStatus:
        """How a reader whose own upstream answer it got was served."""
        if request.key is not None and self._cache is not None and request.decision.uses_cache:
            return CacheStatus.MISS
        return CacheStatus.BYPASS

    def _land(self, key: str, flight: _StreamFlight, _task: object = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _ended(self, flight: _StreamFlight, _task: object) -> None:
        self._running.discard(flight)

    async def _produce(self, flight: _StreamFlight, request: Request, call: Call) -> None:
        broadcast = flight.broadcast
        try:
            await self._flow(flight, request, call)
        except asyncio.CancelledError:
            if not broadcast.finished:  # aclose() may have told the readers why already
                broadcast.fail(asyncio.CancelledError())
            raise
        except BaseException as exc:
            broadcast.fail(exc)

    async def _flow(self, flight: _StreamFlight, request: Request, call: Call) -> None:
        """Upstream (or another process's stream, replayed), then the store stage."""
        broadcast, cache, key = flight.broadcast, self._cache, request.key
        store = self._stores(request)

        async def lead() -> tuple[CacheEntry, Shared, float]:
            # The raw chunks are kept only for the stored entry's replay.
            exchange = StreamExchange(self._transport, broadcast, StreamAssembler(chunking=store))
            flight.exchange = exchange
            entry = await self._upstream.call(request, exchange, call)
            # A stream cut short by an early [DONE] reached its readers, and no further.
            flight.whole = exchange.whole
            if cache is None or key is None or not store or not _storable(exchange, entry):
                return entry, None, 0.0  # this stream: the next may be (a follower leads)
            refreshing = not request.decision.read  # it replaces what the tiers hold
            data, entry_ttl = kept(await cache.set(key, entry, replacing=refreshing))
            return entry, data, entry_ttl

        shared = self._shared
        if shared is None or cache is None or key is None or not self._joins(request):
            entry, _, _ = await lead()
            broadcast.finish((entry, None))
            return

        async def read(count_miss: bool = True) -> CacheEntry | None:
            found = await cache.get(key, count_miss=count_miss)
            return None if found is None else found[0]

        entry, led = await shared.do(key, lead, read, recheck=partial(read, count_miss=False))
        if not led:  # another process streamed it: replay its entry, unless corrupt
            replay = await replayable(cache, key, entry)
            if replay is not None:
                for chunk in replay:
                    broadcast.push(chunk)
                broadcast.finish((entry, CacheStatus.COALESCED))
                return
            entry, _, _ = await lead()
        broadcast.finish((entry, None))


def _all_in(last: dict[str, Any] | None, finishes: Finishes) -> bool:
    """Whether a reader whose last chunk was ``last`` saw all of the answer but its end:
    every choice asked for finished, or the usage chunk came (one of usage alone: some
    servers send usage on every chunk)."""
    return last is not None and (
        finishes.whole or (bool(last.get("usage")) and not last.get("choices"))
    )


def _paid_by_another(flight: _StreamFlight, led: bool) -> bool:
    """Whether a reader of ``flight`` is served, as it stands, an answer another caller
    pays for: another process's stream, replayed; or one another reader started and still
    reads, or has claimed (``StreamFlights._claims``). A reader whose starter left may
    get it as its own: unknown until the end."""
    result = flight.broadcast.result
    if result is not None and result[1] is CacheStatus.COALESCED:
        return True
    return not led and (flight.claimed or not flight.leader_left)


def _left_if_gone(flight: _StreamFlight) -> None:
    """For another caller about to get ``flight``'s answer: a reader who started it and
    has gone without closing its stream (``CompletionStream._gone``: a bare ``break``,
    its task since ended) left, and its claim is that caller's. (Only its claim: its
    stream, which could still be read, is the Client's ``aclose()`` to close.)"""
    if flight.claimed or flight.leader_left or flight.leader is None:
        return
    leader = flight.leader()
    if leader is not None and leader._gone():
        flight.leader_left = True


def _cancelling() -> bool:
    """Whether the reader's own task is being cancelled (it unwinds, and is counted so)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _ended_soon(flight: _StreamFlight) -> bool:
    """Whether ``flight``'s upstream stream ends with an answer within ``TAIL_GRACE``
    seconds (waited for, never cancelled here)."""
    if not flight.task.done():
        await asyncio.wait({flight.task}, timeout=TAIL_GRACE)
    broadcast = flight.broadcast
    return broadcast.finished and broadcast.result is not None


async def _answered(answering: Awaitable[tuple[Filled, bool]]) -> tuple[Filled, bool] | None:
    """What ``complete()``'s flight answered, or None when it failed in a way a waiter may
    retry (the stream reader then starts its own)."""
    try:
        return await answering
    except APIError as exc:
        if should_retry(exc):
            return None
        raise


def _storable(exchange: StreamExchange, entry: CacheEntry) -> bool:
    """Whether a stream's answer may be stored: every choice asked for ended with its
    ``finish_reason`` (``StreamExchange.whole``), and it is fit to serve (``storable``)."""
    return exchange.whole and storable(entry)


class _StreamFlight:
    __slots__ = (
        "broadcast",
        "claimed",
        "copied",
        "exchange",
        "leader",
        "leader_left",
        "readers",
        "task",
        "whole",
    )

    def __init__(self, *, shared: bool, copied: bool) -> None:
        # A flight nobody else can join has one reader: it holds only the unread chunks.
        self.broadcast: Broadcast[dict[str, Any], tuple[CacheEntry, CacheStatus | None]] = (
            Broadcast(replay=shared)
        )
        # Whether each reader gets chunks of its own: when other readers, or the replay
        # the store keeps, hold the same ones, what one reader does to a chunk it got
        # must reach none of them (as ``Completion.raw`` is each caller's own).
        self.copied = copied
        self.readers = 0
        self.whole = True  # every choice asked for ended with a finish_reason
        # The answer's one claim (see ``StreamFlights._claims``): taken, and whether the
        # reader who started the stream left before its end.
        self.claimed = False
        self.leader_left = False
        # The stream of the reader who started it, to tell whether it has gone: weakly,
        # so that one dropped unclosed is still the garbage collector's to close.
        self.leader: weakref.ref[CompletionStream] | None = None
        self.exchange: StreamExchange | None = None  # the upstream stream, once sent
        self.task: asyncio.Task[None]

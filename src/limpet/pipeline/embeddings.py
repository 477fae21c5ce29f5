"""``embed()``'s pipeline, per input: keys → lookup → flights → batches → merge → store.

Every input is its own cache entry (a packed float32 vector, ``limpet.pipeline.vectors``), so a
batch with 90 of 100 inputs cached sends the 10 others, and nothing else:

- duplicates inside a call are looked up, sent and stored once;
- an input another call of this process is already sending is awaited, not re-sent
  (per-input single-flight: a table of futures, one per input in flight), unless either
  call passes ``cache="bypass"`` or ``"refresh"``: such a call sends its own;
- the inputs this call sends are packed into requests of at most the endpoint's
  ``embedding_batch_size`` and about ``embedding_batch_tokens``, sent concurrently, and
  merged back by each response item's ``index``, checked to come back exactly once;
- the sending runs as a task of its own, so a caller that gives up never fails the
  callers waiting on the same inputs; what came back is stored whoever still waits.

Across processes, inputs are shared through the cache's shared tier (Redis, Memcached):
an input another process stored is a hit; with a tier that offers flight leases (Redis),
an input another process is sending is awaited too (``limpet.flight.embeddings``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from limpet.cache.remote import RemoteCache
from limpet.cache.tiered import TieredCache
from limpet.config import Endpoint
from limpet.flight.embeddings import fetch_shared
from limpet.flight.shared import RedisFlight, Shared, kept
from limpet.http.responses import malformed_answer
from limpet.http.transport import Transport
from limpet.models import Embeddings, Usage
from limpet.observe.stats import Stats
from limpet.pipeline.account import Accounting, add_batch, add_spend, merge_sent
from limpet.pipeline.calls import Call
from limpet.pipeline.embed_result import (
    Sent,
    embeddings_result,
    input_refusal,
    refused_as_sent,
    settle,
)
from limpet.pipeline.keys import request_keys
from limpet.pipeline.policy import CacheDecision
from limpet.pipeline.request import EmbedRequest
from limpet.pipeline.upstream import first_answer
from limpet.pipeline.vectors import (
    DEFAULT_MAX_INPUTS,
    EmbedInput,
    Vector,
    VectorCodec,
    cost_shares,
    dimensions_sent,
    encoded_inputs,
    estimate_tokens,
    item_prefix,
    merge_by_index,
    plan_batches,
)
from limpet.providers.usage import parse_usage
from limpet.routing.base import Router

__all__ = ["Embedder"]

logger = logging.getLogger("limpet")


class Embedder:
    """Embeds inputs through the cache, per input; the Client's ``embed()`` delegates here.

    Args:
        cache: the Client's tiers, or None.
        transport: sends ``/embeddings`` requests.
        router: routes each request, and learns how it went: the Client's, so that
            ``embed()`` and ``complete()`` share one view of each endpoint's health. A
            request is sized for every one of its endpoints (the least
            ``embedding_batch_size`` and ``embedding_batch_tokens``), as any may be sent it.
        stats: counts embedded inputs (``embedding_hits`` ...) apart from completions.
        accounting: prices each request's answer, and tells what it cost as it comes
            (whether or not its caller is still there).
        coalesce: await inputs another call is sending rather than sending them again.
        shared: per-input leases across processes (the cache's Redis tier), or None.
        max_inputs: inputs one call may carry.
    """

    __slots__ = (
        "_accounting",
        "_cache",
        "_coalesce",
        "_codec",
        "_inflight",
        "_router",
        "_shared",
        "_stats",
        "_tasks",
        "_transport",
        "max_inputs",
    )

    def __init__(
        self,
        *,
        cache: TieredCache | None,
        transport: Transport,
        router: Router,
        stats: Stats,
        accounting: Accounting,
        coalesce: bool = True,
        shared: RedisFlight[Vector] | None = None,
        max_inputs: int = DEFAULT_MAX_INPUTS,
    ) -> None:
        self._cache = cache
        self._codec = VectorCodec(cache.hmac_key if cache is not None else None)
        self._transport = transport
        self._router = router
        self._stats = stats
        self._accounting = accounting
        self._coalesce = coalesce
        self._shared = shared
        self.max_inputs = max_inputs
        # One future per input being sent by some call of this process, by flight key
        # (its key and the call's ``flight_scope``: under ``cache_scope="namespace"`` a
        # call never awaits another credential's request, nor gets its 401): bounded by
        # the inputs in flight, each removed when its request ends.
        self._inflight: dict[str, asyncio.Future[Vector]] = {}
        self._tasks: set[asyncio.Future[Sent]] = set()

    def keys(
        self,
        model: str,
        texts: Sequence[EmbedInput],
        params: dict[str, Any],
        *,
        namespace: str,
        scope: str,
        credential: str,
    ) -> list[str]:
        """The cache key of each input: ``request_key(item_canonical(...))``, with the
        part the inputs share hashed once (a kind tag keeps them apart from completions')."""
        return request_keys(
            item_prefix(model, params),
            encoded_inputs(texts),
            namespace=namespace,
            scope=scope,
            credential=credential,
        )

    async def embed(
        self,
        request: EmbedRequest,
        keys: list[str],
        call: Call,
        found: dict[str, Vector] | None = None,
    ) -> Embeddings:
        """The vectors of ``request``'s inputs (keyed by ``keys``), each sent at most once.

        Args:
            found: what ``lookup_local`` found already (the in-process tiers are then
                not read again).

        Raises:
            EmbeddingBatchError: some inputs failed; the others are cached and given.
        """
        texts, decision = request.texts, request.decision
        first: dict[str, EmbedInput] = {}  # distinct keys in input order, with their input
        for key, text in zip(keys, texts, strict=True):
            first.setdefault(key, text)
        if found is None:
            found = await self.lookup_local(keys, decision)
        rest = [key for key in first if key not in found]
        shared = await self._lookup_shared(rest, decision)
        found.update(shared)
        missing = [key for key in rest if key not in shared]
        if missing and self._read_shared(decision):
            # The shared read yielded: a call of this process may have stored some since.
            found.update(await self.lookup_local(missing, decision))
            missing = [key for key in missing if key not in found]
        waiting: dict[str, asyncio.Future[Vector]] = {}
        owned: list[str] = []
        scope = request.flight_scope
        for key in missing:
            flight = self._inflight.get(key + scope) if self._shares(decision) else None
            if flight is not None:
                waiting[key] = flight
            else:
                owned.append(key)
        sent = Sent()
        if owned:
            call.waiting_for = "embeddings from upstream"
            sent = await self._send_owned(request, [(key, first[key]) for key in owned], call)
        if waiting:
            call.waiting_for = "embeddings another call is sending"
            await asyncio.wait(waiting.values())
        # Refused in another call's request, perhaps for another call's input (one too
        # long for the model fails the whole request): sent again by one of the calls
        # that awaited it, the others (and calls that come meanwhile) awaiting that one.
        awaited = [key for key, flight in waiting.items() if refused_as_sent(flight)]
        elsewhere = [key for key in sent.failed_elsewhere if input_refusal(sent.failed[key])]
        if awaited or elsewhere:
            for key in awaited:
                del waiting[key]
            for key in elsewhere:
                del sent.failed[key]
            again = awaited + elsewhere
            mine = await self._send_or_join(request, again, first, call, sent, waiting, found)
            # The request joined may carry an input of its sender's that is refused
            # again: this call sends its inputs once more, or joins the call that does,
            # and that answer is final.
            alone = [key for key in again if key in waiting and refused_as_sent(waiting[key])]
            if alone:
                for key in alone:
                    del waiting[key]
                mine |= await self._send_or_join(request, alone, first, call, sent, waiting, found)
            # Misses: what this call sent (those from elsewhere it had sent already).
            resent = set(again)
            owned = [key for key in owned if key not in resent or key in mine]
            owned += [key for key in awaited if key in mine]
        model = request.model
        return embeddings_result(self._stats, model, texts, keys, found, sent, waiting, len(owned))

    async def _send_or_join(
        self,
        request: EmbedRequest,
        keys: list[str],
        first: dict[str, EmbedInput],
        call: Call,
        sent: Sent,
        waiting: dict[str, asyncio.Future[Vector]],
        found: dict[str, Vector],
    ) -> set[str]:
        """Send ``keys`` (their texts in ``first``) for this call, what comes back added
        to ``sent``; but those the in-process tiers hold by now are taken from there
        (added to ``found``: another call sent them again meanwhile), and those another
        call of this process is sending now are awaited (added to ``waiting``). Returns
        the keys this call sent."""
        found.update(held := await self.lookup_local(keys, request.decision))
        inflight, scope = self._inflight, request.flight_scope
        joined = {k: inflight[k + scope] for k in keys if k not in held and k + scope in inflight}
        mine = [(key, first[key]) for key in keys if key not in held and key not in joined]
        if mine:
            call.waiting_for = "embeddings from upstream"
            merge_sent(sent, await self._send_owned(request, mine, call))
        if joined:
            call.waiting_for = "embeddings another call is sending"
            waiting.update(joined)
            await asyncio.wait(joined.values())
        return {key for key, _ in mine}

    async def _send_owned(
        self, request: EmbedRequest, items: list[tuple[str, EmbedInput]], call: Call
    ) -> Sent:
        """Send and store ``items`` (``_start``), for this call and whoever awaits them.
        Their requests outlive a caller that leaves when others may await them or their
        answer is stored (paid for, it is worth keeping); a bypass call's go with it
        (nobody could use them)."""
        sending = self._start(request, items, call)
        if self._shares(request.decision) or request.decision.write:
            return await asyncio.shield(sending)
        return await sending

    @property
    def running(self) -> tuple[asyncio.Future[Sent], ...]:
        """The requests being sent now, whether or not a caller still awaits them."""
        return tuple(self._tasks)

    async def aclose(self) -> None:
        """Cancel the requests still running and wait until they have unwound."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def lookup_local(self, keys: list[str], decision: CacheDecision) -> dict[str, Vector]:
        """The vectors the in-process tiers hold among ``keys``: no I/O, nothing awaited
        that could yield (the hit path)."""
        cache = self._cache
        found: dict[str, Vector] = {}
        if cache is None or not decision.read or not cache.local_tiers:
            return found
        decode, local = self._codec.decode, cache.local_tiers
        for key in dict.fromkeys(keys):
            hit = await cache.get_value(key, decode, stop=local)
            if hit is not None:
                found[key] = hit[0]
        return found

    def hits(
        self, model: str, texts: list[EmbedInput], keys: list[str], found: dict[str, Vector]
    ) -> Embeddings:
        """The result of a call whose every input ``found`` holds."""
        return embeddings_result(self._stats, model, texts, keys, found, Sent(), {}, 0)

    def _read_shared(self, decision: CacheDecision) -> bool:
        """Whether a lookup reads tiers outside this process (and so may yield)."""
        cache = self._cache
        return cache is not None and decision.read and cache.local_tiers < len(cache.tiers)

    async def _lookup_shared(self, rest: list[str], decision: CacheDecision) -> dict[str, Vector]:
        """The vectors the shared tiers hold among ``rest``, read concurrently."""
        cache = self._cache
        found: dict[str, Vector] = {}
        if cache is None or not rest or not self._read_shared(decision):
            return found
        decode, local = self._codec.decode, cache.local_tiers
        hits = await asyncio.gather(*(cache.get_value(key, decode, start=local) for key in rest))
        for key, hit in zip(rest, hits, strict=True):
            if hit is not None:
                found[key] = hit[0]
        return found

    def _shares(self, decision: CacheDecision) -> bool:
        """Whether a call of ``decision`` shares its inputs in flight with other calls of
        this process: it awaits theirs, and registers its own for them to await."""
        return self._coalesce and decision.coalesce

    def _start(
        self, request: EmbedRequest, items: list[tuple[str, EmbedInput]], call: Call
    ) -> asyncio.Future[Sent]:
        """Send and store ``items`` as a task of its own, their futures registered in the
        same step (no await between): another call finds them in flight from here on.
        A call that does not share (``cache="bypass"`` or ``"refresh"``) registers none:
        its requests end at its own deadline, and a bypass stores nothing, so a call
        awaiting them could fail by another's deadline, and find its input never cached."""
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key, _ in items}
        if self._shares(request.decision):
            scope = request.flight_scope
            self._inflight.update((key + scope, future) for key, future in futures.items())
        task = asyncio.ensure_future(self._send(request, items, futures, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send(
        self,
        request: EmbedRequest,
        items: list[tuple[str, EmbedInput]],
        futures: dict[str, asyncio.Future[Vector]],
        call: Call,
    ) -> Sent:
        """Every request for ``items``, concurrently, and the vectors stored; then each
        future gets its vector or its request's error and leaves the in-flight table,
        whatever happened (stored first: an input is always in flight or cached)."""
        sent = Sent()
        try:
            decision = request.decision
            if self._shared is not None and decision.coalesce and self._cache is not None:
                await self._send_shared(self._shared, request, items, call, sent)
            else:
                await self._requests(request, items, call, sent)
                if decision.write:
                    # A refresh (written, not read) replaces what the tiers hold.
                    await self._store(sent.vectors, request.ttl, replacing=not decision.read)
        finally:
            for key, future in futures.items():
                if self._inflight.get(key + request.flight_scope) is future:
                    del self._inflight[key + request.flight_scope]
                settle(future, sent.vectors.get(key), sent.failed.get(key))
        return sent

    async def _requests(
        self, request: EmbedRequest, items: list[tuple[str, EmbedInput]], call: Call, sent: Sent
    ) -> dict[str, Vector | BaseException]:
        """``items`` in requests of at most the batch size, concurrently; what came back
        (each key's vector or its request's error) is added to ``sent`` and returned."""
        # Any endpoint may be sent a request when those before it fail: it must fit all.
        endpoints = self._router.endpoints
        size = min(endpoint.embedding_batch_size for endpoint in endpoints)
        budget = min(
            (e.embedding_batch_tokens for e in endpoints if e.embedding_batch_tokens is not None),
            default=None,
        )
        sizes = (
            [estimate_tokens(text) for _, text in items] if budget is not None else [0] * len(items)
        )
        batches = plan_batches(sizes, size, budget)
        answers = await asyncio.gather(
            *(self._request(request, items[b.start : b.stop], call, sent) for b in batches),
            return_exceptions=True,
        )
        results: dict[str, Vector | BaseException] = {}
        for batch, answer in zip(batches, answers, strict=True):
            batch_keys = [key for key, _ in items[batch.start : batch.stop]]
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                sent.failed.update(dict.fromkeys(batch_keys, answer))
                results.update(dict.fromkeys(batch_keys, answer))
            else:
                add_batch(sent, batch_keys, *answer)
                results.update(zip(batch_keys, answer[0], strict=True))
        return results

    async def _send_shared(
        self,
        shared: RedisFlight[Vector],
        request: EmbedRequest,
        items: list[tuple[str, EmbedInput]],
        call: Call,
        sent: Sent,
    ) -> None:
        """``items`` under cross-process leases (``limpet.flight.embeddings``): those another
        process is sending are read when it stores them, and counted as coalesced."""
        cache = self._cache
        assert cache is not None
        decode, encode, local = self._codec.decode, self._codec.encode, cache.local_tiers
        ttl = request.ttl

        async def send(batch: list[tuple[str, EmbedInput]]) -> dict[str, Vector | BaseException]:
            return await self._requests(request, batch, call, sent)

        async def read(key: str) -> Vector | None:
            found = await cache.get_value(key, decode, start=local)
            return None if found is None else found[0]

        async def share(key: str, vector: Vector) -> tuple[Shared, float]:
            data = encode(key, vector, time.time() + ttl)
            # What the cache would not keep, the flight does not share either.
            return kept((data, ttl) if await cache.set_value(key, data, ttl) else None)

        fetched = await fetch_shared(shared, dict(items), send, read, share)
        sent.vectors.update(fetched.vectors)
        sent.failed.update(fetched.failed)
        sent.from_others = fetched.from_others
        sent.failed_elsewhere = set(fetched.failed) - fetched.sent_here

    async def _store(
        self, vectors: dict[str, Vector], ttl: float, *, replacing: bool = False
    ) -> None:
        """Store ``vectors`` in every tier. A shared tier queues its writes, and drops
        those beyond its queue's bound: a call of thousands of inputs is stored in pieces
        each queue absorbs, waiting for room while its tier is healthy, so that nothing
        is dropped but by a failing tier. Each piece is stored without yielding, so no
        other caller takes its room meanwhile (unless ``replacing``: each vector replaces
        one that must not be served any more, deleted first, ``TieredCache.set_value``)."""
        cache = self._cache
        if cache is None or not vectors:
            return
        expires = time.time() + ttl
        encode = self._codec.encode
        queues = [tier for tier in cache.tiers if isinstance(tier, RemoteCache)]
        items = list(vectors.items())
        stored = 0
        while stored < len(items):
            room = await _write_room(queues)
            piece = items[stored : len(items) if room is None else stored + room]
            for key, vector in piece:
                await cache.set_value(key, encode(key, vector, expires), ttl, replacing=replacing)
            stored += len(piece)

    async def _request(
        self, request: EmbedRequest, items: list[tuple[str, EmbedInput]], call: Call, sent: Sent
    ) -> tuple[list[Vector], dict[str, Any], str, Usage, float | None]:
        """One request with ``call``'s headers, routed by the Client's router (an ejected
        endpoint last, each outcome told to its health), failing over to the next endpoint
        on a retryable error; no retry starts that could not end before its deadline, unless
        other calls may be awaiting these inputs: then ``call``'s deadline is its own (its
        scope ends its wait, as theirs end theirs), and must not fail inputs they await.

        What an answer cost is told to ``spent`` as it comes (the Client may close, or
        the call's other requests fail, before the rest): the vectors, each with its
        share of those dollars (``cost_shares``), the answer, the endpoint's name, its
        usage and dollars. An answer refused as malformed was paid all the same: its cost
        is told, and added to ``sent``, before it is refused."""
        texts = [text for _, text in items]
        body = {**request.keyed, **request.wire, "model": request.model, "input": texts}
        deadline = None if self._shares(request.decision) else call.deadline
        keyed = request.keyed
        # No await from here to the first attempt: the router counts the request in
        # flight (and lets it be an ejected endpoint's half-open probe) from route() on.
        route = await self._router.route(body)

        async def attempt(
            endpoint: Endpoint,
        ) -> tuple[list[Vector], dict[str, Any], str, Usage, float | None]:
            self._stats.embedding_requests += 1
            answer = await self._transport.embeddings(
                endpoint, route.body_for(endpoint), headers=call.headers, deadline=deadline
            )
            usage = parse_usage(answer.get("usage"))
            cost = await self._accounting.embedding(request.model, answer, usage, deadline)
            try:
                asked = dimensions_sent(keyed, endpoint.extra_body)
                packed = merge_by_index(answer["data"], len(items), asked)
            except ValueError as exc:
                add_spend(sent, usage, cost)
                raise malformed_answer(
                    endpoint, f"embeddings response is malformed: {exc}"
                ) from None
            shares = cost_shares([estimate_tokens(text) for text in texts], cost)
            vectors = list(map(Vector, packed, shares))
            return vectors, answer, endpoint.name, usage, cost

        _, answer = await first_answer(route, attempt, call.headers)
        return answer


async def _write_room(queues: Sequence[RemoteCache]) -> int | None:
    """How many writes every tier of ``queues`` takes now, waiting while one that is
    healthy has no room (at least one, then); None when none bounds them."""
    while True:
        rooms = [queue.write_room for queue in queues]
        full = next((queue for queue, room in zip(queues, rooms, strict=True) if room == 0), None)
        if full is None:
            return min((room for room in rooms if room is not None), default=None)
        await full.wait_for_write_room()

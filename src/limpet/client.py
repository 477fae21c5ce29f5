"""The Client: validation, policy, keys, cache, single-flight and transport wired together."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from limpet.cache.base import CacheBackend, CacheEntry
from limpet.cache.generations import Generations, GenerationStore
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.config import (
    AdmissionConfig,
    CachePolicy,
    Endpoint,
    FlightConfig,
    RetryConfig,
    Timeouts,
    default_base_url,
)
from limpet.errors import APIError, ClientClosedError, ConfigurationError, InvalidRequestError
from limpet.flight.local import SingleFlight
from limpet.flight.shared import FlightStore, RedisFlight
from limpet.http.admission import metered_queueing
from limpet.http.retry import should_retry
from limpet.http.transport import Transport
from limpet.models import CacheStatus, Completion, Cost, Embeddings
from limpet.observe.events import CallEvent, EventHook, embedding_event, emit_event, event_of
from limpet.observe.fleet import FleetCounters
from limpet.observe.stats import Stats
from limpet.observe.warm import DEFAULT_WARM_CONCURRENCY, WarmReport, is_embedding, warm
from limpet.pipeline.calls import Call, RunningCalls
from limpet.pipeline.completions import completion_of, storable
from limpet.pipeline.credentials import CACHE_SCOPES, CacheScope, call_scope, credential_scope
from limpet.pipeline.embeddings import Embedder
from limpet.pipeline.keys import canonical_request, request_key
from limpet.pipeline.policy import CacheDecision, CacheMode, decide
from limpet.pipeline.stream import CompletionStream, StreamFlights
from limpet.pipeline.validation import (
    response_format_param,
    validate_call_options,
    validate_request,
    validate_ttl,
    with_extra_body,
)
from limpet.pipeline.vectors import DEFAULT_MAX_INPUTS, embedding_params, validate_inputs
from limpet.providers.pricing import PriceTable, completion_cost, prompt_cache_savings
from limpet.providers.prompt_cache import (
    DEFAULT_CACHE_CONTROL,
    CacheControlConfig,
    breakpoint_ttl,
    inject_cache_control,
)
from limpet.providers.usage import parse_usage, reported_cost, with_write_ttl
from limpet.routing.affinity import affinity_store_for
from limpet.routing.sticky import Router, StickyRouter

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = ["DEFAULT_CLOSE_GRACE", "DEFAULT_TTL", "Client"]

logger = logging.getLogger("limpet")

DEFAULT_TTL = 3600.0
#: Seconds ``aclose()`` lets running calls finish before cancelling them.
DEFAULT_CLOSE_GRACE = 5.0
#: Seconds ``aclose()`` waits for cancelled calls to unwind before closing anyway.
_UNWIND_TIMEOUT = 5.0

# The default of ``model`` and ``messages``: left out, they fail validation, naming the
# field (InvalidRequestError), rather than the call failing with Python's TypeError.
_REQUIRED: Any = None

API_KEY_ENV = "OPENROUTER_API_KEY"


class _DefaultCache:
    def __repr__(self) -> str:
        return "MemoryCache()"


_DEFAULT_CACHE: Final = _DefaultCache()

# A flight's result: the entry, and how it was found when not by this flight's own
# upstream call (HIT: in the cache after all; COALESCED: another process's call).
_Filled = tuple[CacheEntry, CacheStatus | None]


class Client:
    """Makes chat-completion calls through OpenAI-compatible gateways, cheaper and faster.

    Identical deterministic requests are answered from the response cache; concurrent
    identical misses share one upstream call; every call reports usage, cost and how it
    was served. The Client owns the cache and the HTTP session: ``aclose()`` (or leaving
    ``async with``) closes both, after pending cache writes have landed.

    Args:
        endpoints: where to send requests. Or use ``base_url``/``api_key`` for one endpoint;
            with neither, ``$LIMPET_BASE_URL`` (else OpenRouter) and ``$OPENROUTER_API_KEY``.
        base_url: the one-endpoint shortcut's API root.
        api_key: the one-endpoint shortcut's key.
        cache: a backend (``MemoryCache()`` by default, ``RedisCache``) or a ``TieredCache``;
            None turns response caching off.
        ttl: default seconds an entry lives; ``complete(ttl=...)`` overrides it per call.
        coalesce: share one upstream call among concurrent identical cacheable misses, in
            this process and, when the cache has a Redis tier, across processes.
        flight: leases and timeouts of cross-process coalescing.
        auto_cache_control: mark long static prefixes with ``cache_control`` for models that
            cache only up to a breakpoint (``anthropic/*``, Gemini through OpenRouter): True
            for the defaults, or a ``CacheControlConfig`` (TTL, a rolling breakpoint on the
            last user turn, the capability table). Only what is sent is marked: the cache
            key, routing and ``Completion`` are those of the caller's request.
        prices: per-model prices for ``Completion.cost``; by default the first endpoint's
            ``/models``, fetched once on the first upstream call, then genai-prices.
        policy: which requests are cacheable (by default: temperature == 0).
        namespace: isolates tenants or key-schema versions sharing one cache.
        cache_scope: ``"credential"`` (the default): entries are shared only by Clients
            with the same credentials (a keyed digest of the endpoints' API keys and
            credential headers enters every cache key, never the key itself);
            ``"namespace"``: shared by every Client of the namespace, whatever its key.
        retry: retry attempts and backoff for upstream calls.
        timeouts: connect and total timeouts, connection pool size.
        app_url: sent as ``HTTP-Referer`` (OpenRouter attribution); never part of the key.
        app_title: sent as ``X-Title`` (OpenRouter attribution); never part of the key.
        on_event: called with a ``CallEvent`` after every call (or a list of such hooks):
            ``limpet.metrics.PrometheusMetrics()``, ``limpet.tracing.OpenTelemetrySpans()``
            or your own; a hook that raises is logged and ignored.
        router: chooses the endpoint of each upstream call, and holds the endpoints (give
            it instead of ``endpoints=``); by default a ``StickyRouter`` over ``endpoints``.
            Its affinity map is shared through the cache's Redis tier, if any. The Client
            closes it.
        fleet_stats: with a Redis tier, also count calls per model in Redis (batched in
            the background) for ``limpet stats``.
        close_grace: seconds ``aclose()`` lets running calls finish before cancelling
            them (they raise ``ClientClosedError``).
        max_embed_inputs: inputs one ``embed()`` call may carry (more is an
            ``InvalidRequestError``).
        admission: how upstream requests are admitted to each endpoint: a cap
            (``Endpoint.max_in_flight``), a limit learned from 429s, one shared pause per
            ``Retry-After``, first come first served (``AdmissionConfig``); on by default,
            False or None sends every request at once.

    Example:
        >>> async with Client(api_key="sk-or-...") as client:
        ...     c = await client.complete(
        ...         model="anthropic/claude-sonnet-4.6",
        ...         messages=[{"role": "user", "content": "hi"}],
        ...         temperature=0,
        ...     )
        ...     print(c.content, c.cache, c.cost)
    """

    def __init__(
        self,
        *,
        endpoints: Sequence[Endpoint] | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        cache: CacheBackend | TieredCache | _DefaultCache | None = _DEFAULT_CACHE,
        ttl: float = DEFAULT_TTL,
        coalesce: bool = True,
        flight: FlightConfig | None = None,
        auto_cache_control: bool | CacheControlConfig = False,
        prices: PriceTable | None = None,
        policy: CachePolicy | None = None,
        namespace: str = "",
        retry: RetryConfig | None = None,
        timeouts: Timeouts | None = None,
        app_url: str | None = None,
        app_title: str | None = None,
        on_event: EventHook | Sequence[EventHook] | None = None,
        fleet_stats: bool = True,
        router: Router | None = None,
        cache_scope: CacheScope = "credential",
        close_grace: float = DEFAULT_CLOSE_GRACE,
        max_embed_inputs: int = DEFAULT_MAX_INPUTS,
        admission: AdmissionConfig | bool | None = True,
    ) -> None:
        self._cache_control = _resolve_cache_control(auto_cache_control)
        self._router = _resolve_router(router, endpoints, base_url, api_key)
        self._endpoints = self._router.endpoints
        self._cache = _resolve_cache(cache)
        if isinstance(self._router, StickyRouter) and self._router.store is None:
            # Share the affinity map through the Redis tier, when there is one.
            tiers = self._cache.tiers if self._cache is not None else ()
            self._router.use_store(affinity_store_for(tiers))
        try:
            self._ttl = validate_ttl(ttl) or DEFAULT_TTL
        except InvalidRequestError as exc:
            raise ConfigurationError(f"Client.{exc}") from None
        if isinstance(close_grace, bool) or not isinstance(close_grace, int | float):
            raise ConfigurationError(f"Client.close_grace: expected seconds, got {close_grace!r}")
        if not 0 <= close_grace < math.inf:
            raise ConfigurationError(
                f"Client.close_grace: expected a finite number >= 0, got {close_grace!r}"
            )
        self._close_grace = float(close_grace)
        if not isinstance(namespace, str):
            raise ConfigurationError(f"Client.namespace: expected a str, got {namespace!r}")
        self._namespace = namespace
        if cache_scope not in CACHE_SCOPES:
            raise ConfigurationError(
                f"Client.cache_scope: expected 'credential' or 'namespace', got {cache_scope!r}"
            )
        # Derived once; only the digest is kept (a router's endpoints are fixed).
        self._credential = credential_scope(self._endpoints) if cache_scope == "credential" else ""
        self._policy = policy or CachePolicy()
        self._flight: SingleFlight[_Filled] | None = (
            SingleFlight(retry_if=should_retry) if coalesce else None
        )
        self._generations = Generations(
            _generation_store(self._cache), namespace=namespace, credential=self._credential
        )
        flight_store = _flight_store(self._cache) if coalesce else None
        self._shared_flight: RedisFlight[_Filled] | None = (
            None if flight_store is None else RedisFlight(flight_store, flight)
        )
        headers = {}
        if app_url:
            headers["HTTP-Referer"] = app_url
        if app_title:
            headers["X-Title"] = app_title
        self._transport = Transport(
            timeouts=timeouts or Timeouts(),
            retry=retry or RetryConfig(),
            headers=headers,
            admission=_resolve_admission(admission),
        )
        if prices is not None and not isinstance(prices, PriceTable):
            raise ConfigurationError("Client.prices: expected a PriceTable or None")
        self._prices = prices if prices is not None else PriceTable(self._fetch_models)
        self._local_tiers = self._cache.local_tiers if self._cache is not None else 0
        self.stats = Stats()
        self._streams = StreamFlights(
            cache=self._cache,
            transport=self._transport,
            shared=None if flight_store is None else RedisFlight(flight_store, flight),
            router=self._router,
            outgoing=self._outgoing,
            entry=self._entry,
            priced=self._priced,
            stats=self.stats,
        )
        if self._cache is not None:
            self.stats.attach(self._cache)
        self.stats.admissions = self._transport.admissions
        if isinstance(self._router, StickyRouter):
            self._router.use_admissions(self._transport.admissions)
        redis_tier = _redis_tier(self._cache) if fleet_stats else None
        self._fleet = None if redis_tier is None else FleetCounters(redis_tier)
        self._hooks: tuple[EventHook, ...] = (
            () if on_event is None else (on_event,) if callable(on_event) else tuple(on_event)
        )
        if isinstance(max_embed_inputs, bool) or not isinstance(max_embed_inputs, int):
            raise ConfigurationError("Client.max_embed_inputs: expected an int >= 1")
        if max_embed_inputs < 1:
            raise ConfigurationError("Client.max_embed_inputs: expected an int >= 1")
        self._embedder = Embedder(
            cache=self._cache,
            transport=self._transport,
            endpoints=self._endpoints,
            stats=self.stats,
            prices=self._prices,
            coalesce=coalesce,
            shared=None if flight_store is None else RedisFlight(flight_store, flight),
            max_inputs=max_embed_inputs,
        )
        self._closed = False
        self._calls = RunningCalls()  # past the hit path; aclose() waits for them
        self._closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self._endpoints)
        return (
            f"Client(endpoints=[{names}], cache={self._cache!r}, ttl={self._ttl:g}, "
            f"coalesce={self._flight is not None}, namespace={self._namespace!r})"
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def prices(self) -> PriceTable:
        """The per-model prices ``Completion.cost`` is computed from."""
        return self._prices

    @property
    def router(self) -> Router:
        """Chooses the endpoints of each upstream call (a ``StickyRouter`` by default)."""
        return self._router

    @property
    def cache(self) -> TieredCache | None:
        """The response cache, or None when caching is off."""
        return self._cache

    async def complete(
        self,
        *,
        model: str = _REQUIRED,
        messages: list[dict[str, Any]] = _REQUIRED,
        cache: CacheMode | None = None,
        ttl: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's per-call deadline)
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Completion:
        """One chat completion, from the cache when it may be.

        Args:
            model: e.g. ``"anthropic/claude-sonnet-4.6"`` (required).
            messages: the chat, OpenAI format (required).
            cache: None (policy decides), ``"bypass"``, ``"refresh"`` or ``"force"``.
            ttl: seconds this answer may be served from the cache; the Client's by default.
            timeout: seconds for the whole call, as the OpenAI SDK's ``timeout=``: waiting
                for an identical call in flight, every attempt and backoff included.
            extra_headers: sent with this call's upstream request (not part of the key).
            extra_body: fields merged into the body (they win), hence into the key.
            **params: any other body field (temperature, max_tokens, tools, provider, ...).
                ``response_format`` may be a Pydantic model class: it is sent as a strict
                ``json_schema`` format, as the OpenAI SDK does.

        Returns:
            The completion; ``.cache`` says how it was served.

        Raises:
            InvalidRequestError: bad input, before any network call.
            APIError: the upstream call failed (``APIStatusError``, ``APIConnectionError``,
                ``APITimeoutError``, ``APIResponseError``). Never a cache fault.
            ClientClosedError: the Client is closed, or was closed during the call.
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        started = time.perf_counter()
        body = {"model": model, "messages": messages, **params}
        if extra_body is not None or "response_format" in body:
            body = _with_extras(body, extra_body)
        if body.get("stream"):
            raise InvalidRequestError("stream", "absent or False in complete()", True)
        validate_request(body)
        if timeout is not None or extra_headers is not None:
            timeout = validate_call_options(timeout, extra_headers)
        entry_ttl = self._ttl if ttl is None else validate_ttl(ttl) or self._ttl
        decision = decide(body, cache, self._policy)
        model = body["model"]
        key = None
        keyed = decision.uses_cache or (decision.coalesce and self._flight is not None)
        scope = self._generations.scope_now(model) if keyed else None
        if scope is not None:
            key = request_key(
                canonical_request(body),
                namespace=self._namespace,
                scope=scope,
                credential=self._credential
                if extra_headers is None
                else call_scope(self._credential, extra_headers),
            )
            store, local = self._cache, self._local_tiers
            if store is not None and local and decision.read:
                # The hit path: in-process tiers, no I/O, nothing shared, nothing awaited
                # that could yield (so aclose() never finds it half-way).
                found = await store.get(key, stop=local)
                if found is not None:
                    completion = completion_of(found[0], CacheStatus.HIT, key)
                    self._finished(model, completion, started)
                    return completion
        call = Call(timeout, extra_headers)
        try:
            with self._calls.counted(), metered_queueing() as queued:
                completion = await self._calls.guarded(
                    call, self._miss(body, decision, entry_ttl, key, keyed, call)
                )
        except APIError as exc:
            self._failed(model, exc, started, queued=sum(queued))
            raise
        self._finished(model, completion, started, queued=sum(queued))
        return completion

    def stream(
        self,
        *,
        model: str = _REQUIRED,
        messages: list[dict[str, Any]] = _REQUIRED,
        cache: CacheMode | None = None,
        ttl: float | None = None,
        timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> CompletionStream:
        """One chat completion as a stream of chunks, from the cache when it may be.

        A plain method: the request is validated now, and sent when the first chunk is
        asked for. A cached answer is replayed as chunks shaped like a live stream;
        concurrent identical streams share one upstream stream; ``stream()`` and
        ``complete()`` of one request share one cache entry.

        Args:
            model, messages, cache, ttl, extra_headers, extra_body, **params: as
                ``complete()``.
            timeout: seconds for the whole stream, from the first chunk asked for to the
                last; ``APITimeoutError`` when it passes.

        Returns:
            A ``CompletionStream``: ``async for chunk in it`` (``chunk.content`` is the text
            delta), or ``async with`` it to stop early; ``.completion`` after the end.

        Raises:
            InvalidRequestError: bad input, at once.
            ClientClosedError: the Client is closed (at once), or was closed mid-stream.
            APIError: while iterating (``APIStreamError`` for a failure mid-stream).
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        params.pop("stream", None)
        body = _with_extras({"model": model, "messages": messages, **params}, extra_body)
        validate_request(body)
        timeout = validate_call_options(timeout, extra_headers)
        entry_ttl = self._ttl if ttl is None else validate_ttl(ttl) or self._ttl
        decision = decide(body, cache, self._policy)
        model = body["model"]

        async def chunks(sink: CompletionStream) -> AsyncGenerator[dict[str, Any], None]:
            if self._closed:
                raise ClientClosedError("Client is closed")
            started = time.perf_counter()
            call = Call(timeout, extra_headers)
            keyed = self._cache is not None and decision.uses_cache
            with self._calls.counted():
                try:
                    key = None
                    if keyed or decision.coalesce:
                        key = await self._calls.guarded(call, self._key(body, call.headers))
                    call.waiting_for = "the next chunk"
                    streamed = self._streams.chunks(
                        body, decision, entry_ttl, key, sink, call.headers, call.deadline
                    )
                    try:
                        # Each wait for a chunk under the deadline, never the caller's
                        # own work between chunks.
                        while True:
                            try:
                                chunk = await self._calls.guarded(call, anext(streamed))
                            except StopAsyncIteration:
                                break
                            yield chunk
                    finally:
                        await streamed.aclose()
                except APIError as exc:
                    self._failed(model, exc, started, stream=True)
                    raise
            if sink.completion is not None:
                self._finished(model, sink.completion, started, stream=True)

        return CompletionStream(chunks)

    async def embed(
        self,
        *,
        model: str = _REQUIRED,
        input: str | list[str] = _REQUIRED,
        dimensions: int | None = None,
        encoding_format: str | None = None,
        cache: CacheMode | None = None,
        ttl: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's per-call deadline)
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Embeddings:
        """Embed ``input`` (POST ``/embeddings``), one cache entry per input.

        Only inputs no tier holds go upstream, each once: duplicates within the call and
        inputs another call is already sending are not sent again; the rest are sent in
        requests of at most ``Endpoint.embedding_batch_size`` inputs, concurrently.

        Args:
            model: e.g. ``"openai/text-embedding-3-small"`` (required).
            input: a text or a list of texts (required), each non-empty.
            dimensions: the vectors' length, for models that can shorten them.
            encoding_format: how vectors travel (``"base64"``, the default, or
                ``"float"``); ``vectors`` are floats either way.
            cache: None, ``"bypass"``, ``"refresh"`` or ``"force"`` (embeddings are
                deterministic: cached by default).
            ttl, timeout, extra_headers, extra_body: as ``complete()``.
            **params: any other body field; those that can change a vector enter the key.

        Returns:
            ``Embeddings``: ``.vectors`` in input order, with ``.hits``, ``.misses`` and
            ``.coalesced`` counted per input, ``.usage`` and ``.cost`` of what was sent.

        Raises:
            InvalidRequestError: bad input (naming the index), before any network call.
            EmbeddingBatchError: some inputs failed; ``.vectors`` has the others, which are
                cached, and ``.failed`` their positions.
            ClientClosedError: the Client is closed, or was closed during the call.
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        started = time.perf_counter()
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model", "a non-empty str", model)
        texts = validate_inputs(input, self._embedder.max_inputs)
        if extra_body is not None:
            params = with_extra_body(params, extra_body)
        keyed, wire = embedding_params(dimensions, encoding_format, params)
        canonical_request(keyed)  # every field JSON: InvalidRequestError now, not later
        timeout = validate_call_options(timeout, extra_headers)
        entry_ttl = self._ttl if ttl is None else validate_ttl(ttl) or self._ttl
        decision = decide({"temperature": 0}, cache, self._policy)  # deterministic
        credential = call_scope(self._credential, extra_headers)
        scope = self._generations.scope_now(model)
        found = None
        if scope is not None:
            # The hit path: in-process tiers only, nothing awaited that could yield.
            keys = self._embedder.keys(
                model, texts, keyed, namespace=self._namespace, scope=scope, credential=credential
            )
            found = await self._embedder.lookup_local(keys, decision)
            if len(found) == len(set(keys)):
                return self._embedded(
                    model, self._embedder.hits(model, texts, keys, found), started
                )
        call = Call(timeout, extra_headers)
        try:
            with self._calls.counted():
                if scope is None:
                    scope = await self._calls.guarded(call, self._generations.scope(model))
                    keys = self._embedder.keys(
                        model,
                        texts,
                        keyed,
                        namespace=self._namespace,
                        scope=scope,
                        credential=credential,
                    )
                work = self._embedder.embed(
                    model,
                    texts,
                    keys,
                    keyed,
                    wire,
                    decision=decision,
                    ttl=entry_ttl,
                    call=call,
                    found=found,
                )
                result = await self._calls.guarded(call, work)
        except APIError as exc:
            self.stats.errors += 1
            if self._hooks:
                seconds = time.perf_counter() - started
                emit_event(self._hooks, embedding_event(model, None, seconds, error=exc))
            raise
        return self._embedded(model, result, started)

    def _embedded(self, model: str, result: Embeddings, started: float) -> Embeddings:
        """Count an ``embed()`` call that returned: tokens, dollars, event hooks (the
        inputs were counted by the embedder)."""
        self.stats.prompt_tokens += result.usage.prompt_tokens
        if result.cost is not None:
            self.stats.cost_usd += result.cost.usd
        if self._hooks:
            seconds = time.perf_counter() - started
            emit_event(self._hooks, embedding_event(model, result, seconds))
        return result

    async def warm(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = DEFAULT_WARM_CONCURRENCY,
        progress: Callable[[WarmReport], None] | None = None,
    ) -> WarmReport:
        """Fill the cache from ``requests`` (each the keyword arguments of ``complete()``,
        or of ``embed()`` when it has ``input`` and no ``messages``), ``concurrency`` at a
        time; cached ones are skipped, failures counted, not raised.

        Example:
            >>> report = await client.warm(
            ...     ({"model": m, "messages": [q], "temperature": 0} for q in faq),
            ...     concurrency=16,
            ... )
            >>> report.warmed, report.skipped, report.failed

        Raises:
            ClientClosedError: the Client is closed.
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        return await warm(self._warm_one, requests, concurrency=concurrency, progress=progress)

    async def _warm_one(self, **request: Any) -> Completion | Embeddings:
        if is_embedding(request):
            return await self.embed(**request)
        return await self.complete(**request)

    async def invalidate(self, model: str | None = None) -> None:
        """Stop serving cached answers for ``model``, or for every model when None.

        A generation bump, not a scan: old entries are never read again and expire by TTL.
        With a Redis tier, other processes follow within about a second. It reaches this
        Client's cache scope: with ``cache_scope="credential"``, only the entries of its
        credentials; with ``"namespace"``, every entry of the namespace.
        """
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidRequestError("model", "a non-empty str or None", model)
        await self._generations.bump(model)

    async def forget(self, *, model: str, messages: list[dict[str, Any]], **params: Any) -> str:
        """Delete the cached answer of one request from every tier; returns its key."""
        body = _with_extras({"model": model, "messages": messages, **params}, None)
        validate_request(body)
        key = await self._key(body)
        if self._cache is not None:
            await self._cache.delete(key)
        return key

    async def aclose(self) -> None:
        """Stop taking calls, let running ones finish, then close what the Client owns.

        New calls raise ``ClientClosedError`` at once. Running calls (and open streams)
        get ``close_grace`` seconds to finish; those still running are then stopped and
        raise ``ClientClosedError``. Then pending cache writes land, flight leases are
        released, and the cache and the HTTP session close. When it returns, nothing of
        the Client runs. Idempotent; concurrent calls all wait for the one closing.
        """
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        # Shielded: a caller cancelled while waiting does not leave the Client half-closed.
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self._stop_calls()
        await self._generations.aclose()
        # Before the cache: the router's last affinity writes go to its Redis.
        await self._router.aclose()
        if self._fleet is not None:
            await self._fleet.aclose()
        try:
            if self._cache is not None:
                await self._cache.aclose()
        finally:
            await self._transport.aclose()

    async def _stop_calls(self) -> None:
        """Wait up to ``close_grace`` for running calls, then stop the rest and wait
        until they have unwound (released leases, landed or dropped their writes)."""
        await self._calls.stop(self._close_grace)
        # The callers first: leaving, they cancel the shared calls no one else waits for.
        if not await self._calls.unwound(_UNWIND_TIMEOUT):
            logger.warning("limpet: calls still running %gs after aclose()", _UNWIND_TIMEOUT)
        # Then what is left (a stream held open but not read), and wait for it all to stop.
        await self._streams.aclose()
        await self._embedder.aclose()
        if self._flight is not None:
            await self._flight.aclose()

    async def _miss(
        self,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        key: str | None,
        keyed: bool,
        call: Call,
    ) -> Completion:
        """Everything past the hit path: the key when the model's generation had to be
        read first, the tiers not read yet, then upstream."""
        store, start = self._cache, self._local_tiers
        if keyed and key is None:
            key = await self._key(body, call.headers)
            start = 0  # the in-process tiers were not read either
        if key is not None and store is not None and decision.read:
            # With coalescing, the shared tiers are read once per key inside the flight.
            coalescing = decision.coalesce and self._flight is not None
            stop = self._local_tiers if coalescing else len(store.tiers)
            found = await store.get(key, start=start, stop=stop) if start < stop else None
            if found is not None:
                return completion_of(found[0], CacheStatus.HIT, key)
        return await self._complete(body, decision, ttl, key, call)

    async def _fetch_models(self) -> object:
        return await self._transport.get_json(self._endpoints[0], "/models")

    async def _key(self, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> str:
        """The cache and flight key of ``body`` sent with a call's own ``headers``."""
        model = body["model"]
        scope = self._generations.scope_now(model) or await self._generations.scope(model)
        return request_key(
            canonical_request(body),
            namespace=self._namespace,
            scope=scope,
            credential=call_scope(self._credential, headers),
        )

    async def _complete(
        self,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        key: str | None,
        call: Call,
    ) -> Completion:
        """Everything after a cache miss (or without a cache lookup)."""
        flight = self._flight
        if key is None:
            entry = await self._upstream(body, ttl, call)
            return self._priced(completion_of(entry, CacheStatus.BYPASS, None), body)
        if flight is not None and decision.coalesce:
            call.waiting_for = "an identical call in flight"
            (entry, source), led = await flight.do(
                key, lambda: self._fill(key, body, decision, ttl, call)
            )
            if source is not None:
                return completion_of(entry, source, key, copy=not led)
            if not led:
                return completion_of(entry, CacheStatus.COALESCED, key, copy=True)
        else:
            entry = await self._call_and_store(key, body, decision, ttl, call)
        status = CacheStatus.MISS if self._cache is not None else CacheStatus.BYPASS
        return self._priced(completion_of(entry, status, key), body)

    def _priced(self, completion: Completion, body: dict[str, Any]) -> Completion:
        """The cost of this caller's own upstream call: dollars spent (kept in the entry)
        and what the provider's prompt cache saved, less write premiums."""
        prices = self._prices.get(completion.model or body["model"], body["model"])
        if completion.cost is not None and prices is not None:
            saved = prompt_cache_savings(completion.usage, prices)
            completion.cost = Cost(completion.cost.usd, saved)
        return completion

    async def _fill(
        self, key: str, body: dict[str, Any], decision: CacheDecision, ttl: float, call: Call
    ) -> _Filled:
        """This process's one call for ``key``: a look in every tier (another flight may
        have just landed), then, when another process shares the cache, a cross-process
        flight, else upstream. Shared by every caller of ``key``: it sends its leader's
        headers, and its leader's deadline is the one that cuts retries short (a waiter
        bounds its own wait, and may retry once on a retryable failure)."""
        cache = self._cache
        if cache is not None and decision.read:
            found = await cache.get(key)
            if found is not None:
                return found[0], CacheStatus.HIT
        shared = self._shared_flight
        if shared is None or cache is None or not decision.coalesce:
            return await self._call_and_store(key, body, decision, ttl, call), None

        async def lead() -> tuple[_Filled, bytes | None, float]:
            entry = await self._upstream(body, ttl, call)
            stored = await cache.set(key, entry) if storable(entry) else None
            data, entry_ttl = stored if stored is not None else (None, 0.0)
            return (entry, None), data, entry_ttl

        async def read() -> _Filled | None:
            found = await cache.get(key)
            return None if found is None else (found[0], CacheStatus.COALESCED)

        filled, _ = await shared.do(key, lead, read)
        return filled

    async def _call_and_store(
        self,
        key: str,
        body: dict[str, Any],
        decision: CacheDecision,
        ttl: float,
        call: Call,
    ) -> CacheEntry:
        entry = await self._upstream(body, ttl, call)
        if self._cache is not None and decision.write and storable(entry):
            await self._cache.set(key, entry)
        return entry

    def _finished(
        self,
        model: str,
        completion: Completion,
        started: float,
        *,
        stream: bool = False,
        queued: float = 0.0,
    ) -> None:
        """Count a call that returned: stats, fleet counters, event hooks."""
        self.stats.record(completion)
        if self._fleet is not None:
            self._fleet.record(model, completion)
        if self._hooks:
            seconds = time.perf_counter() - started
            event = event_of(model, completion, seconds, stream=stream, queued=queued)
            emit_event(self._hooks, self._with_admission(event))

    def _failed(
        self,
        model: str,
        error: BaseException,
        started: float,
        *,
        stream: bool = False,
        queued: float = 0.0,
    ) -> None:
        self.stats.errors += 1
        if self._fleet is not None:
            self._fleet.record_error(model)
        if self._hooks:
            seconds = time.perf_counter() - started
            event = event_of(model, None, seconds, stream=stream, error=error, queued=queued)
            emit_event(self._hooks, self._with_admission(event))

    def _with_admission(self, event: CallEvent) -> CallEvent:
        """``event`` with its endpoint's admission figures, for gauges."""
        admissions = self._transport.admissions
        if admissions is None or event.endpoint is None:
            return event
        return replace(event, admission=admissions.stats().get(event.endpoint))

    def _outgoing(self, body: dict[str, Any]) -> dict[str, Any]:
        """What is sent upstream, marked with ``cache_control``. The key is the caller's
        request's; the route is what is sent, since the marks decide what is cached."""
        if self._cache_control is None:
            return body
        return inject_cache_control(body, self._cache_control)

    async def _entry(
        self,
        answer: dict[str, Any],
        endpoint: str,
        body: dict[str, Any],
        sent: dict[str, Any],
        ttl: float,
        stream: bytes | None = None,
    ) -> CacheEntry:
        """The cache entry of an upstream answer: its usage and what it cost."""
        raw_usage = answer.get("usage")
        # OpenRouter reports one total of cache writes; their TTL is the marks'.
        usage = with_write_ttl(parse_usage(raw_usage), breakpoint_ttl(sent))
        prices = await self._prices.prices(answer.get("model") or body["model"], body["model"])
        cost = completion_cost(usage, prices, reported_cost(raw_usage))
        now = time.time()
        return CacheEntry(
            answer, usage, None if cost is None else cost.usd, endpoint, now, now + ttl, stream
        )

    async def _upstream(self, body: dict[str, Any], ttl: float, call: Call) -> CacheEntry:
        """The answer of the first endpoint that gives one, with ``call``'s headers; no
        retry is started that could not end before ``call``'s deadline."""
        sent = self._outgoing(body)
        # Routed by what the provider sees (injected breakpoints too). No await between
        # route() and the first attempt: the router counts the call in flight from there.
        route = await self._router.route(sent)
        ranked = route.endpoints
        for index, endpoint in enumerate(ranked):
            self.stats.upstream_calls += 1
            try:
                with route.attempt(endpoint) as attempt:
                    call.waiting_for = f"an answer from endpoint {endpoint.name!r}"
                    response = await self._transport.chat(
                        endpoint,
                        route.body,
                        headers=call.headers,
                        deadline=call.deadline,
                        waiting=call.waiting,
                    )
                    attempt.served(parse_usage(response.body.get("usage")))
            except APIError as exc:
                if index + 1 == len(ranked) or not should_retry(exc):
                    raise
                logger.warning(
                    "limpet: endpoint %r failed (%s); trying %r",
                    endpoint.name,
                    exc,
                    ranked[index + 1].name,
                )
                continue
            return await self._entry(response.body, response.endpoint, body, route.body, ttl)
        raise AssertionError("unreachable: the last endpoint's failure is raised")


def _with_extras(body: dict[str, Any], extra_body: object) -> dict[str, Any]:
    """``body`` with ``extra_body``'s fields merged in (they win); a Pydantic model class as
    ``response_format`` becomes the ``json_schema`` format it stands for."""
    if extra_body is not None:
        body = with_extra_body(body, extra_body)
    if "response_format" in body:
        body["response_format"] = response_format_param(body["response_format"])
    return body


def _resolve_admission(value: object) -> AdmissionConfig | None:
    if value is True:
        return AdmissionConfig()
    if value is False or value is None:
        return None
    if isinstance(value, AdmissionConfig):
        return value
    raise ConfigurationError(
        f"Client.admission: expected an AdmissionConfig, True, False or None, got {value!r}"
    )


def _resolve_cache_control(value: object) -> CacheControlConfig | None:
    if value is True:
        return DEFAULT_CACHE_CONTROL
    if value is False or value is None:
        return None
    if isinstance(value, CacheControlConfig):
        return value
    raise ConfigurationError(
        f"Client.auto_cache_control: expected a bool or a CacheControlConfig, got {value!r}"
    )


def _resolve_router(
    router: Router | None,
    endpoints: Sequence[Endpoint] | None,
    base_url: str | None,
    api_key: str | None,
) -> Router:
    if router is None:
        return StickyRouter(_resolve_endpoints(endpoints, base_url, api_key))
    if not isinstance(router, Router):
        raise ConfigurationError(
            f"Client.router: expected a Router such as StickyRouter, got {type(router).__name__}"
        )
    if endpoints is not None or base_url is not None or api_key is not None:
        raise ConfigurationError(
            "Client: the router holds the endpoints; give router= without endpoints=, "
            "base_url= or api_key="
        )
    return router


def _resolve_endpoints(
    endpoints: Sequence[Endpoint] | None, base_url: str | None, api_key: str | None
) -> tuple[Endpoint, ...]:
    if endpoints is not None:
        if base_url is not None or api_key is not None:
            raise ConfigurationError(
                "Client: give either endpoints= or the base_url=/api_key= shortcut, not both"
            )
        resolved = tuple(endpoints)
        if not resolved or not all(isinstance(e, Endpoint) for e in resolved):
            raise ConfigurationError("Client.endpoints: expected a non-empty list of Endpoint")
        names = [e.name for e in resolved]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"Client.endpoints: names must be unique, got {names}")
        return resolved
    return (
        Endpoint(
            "default",
            base_url or default_base_url(),
            api_key=api_key or os.environ.get(API_KEY_ENV) or None,
        ),
    )


def _resolve_cache(cache: object) -> TieredCache | None:
    if cache is None:
        return None
    if isinstance(cache, _DefaultCache):
        return TieredCache(MemoryCache())
    if isinstance(cache, TieredCache):
        return cache
    if isinstance(cache, CacheBackend):
        return TieredCache(cache)
    raise ConfigurationError(
        f"Client.cache: expected a CacheBackend, a TieredCache or None, got {type(cache).__name__}"
    )


def _generation_store(cache: TieredCache | None) -> GenerationStore | None:
    """The lowest tier that keeps generations (the one processes share), if any."""
    for tier in reversed(cache.tiers if cache is not None else ()):
        if isinstance(tier, GenerationStore):
            return tier
    return None


def _redis_tier(cache: TieredCache | None) -> RedisCache | None:
    """The lowest Redis tier, if any (imported lazily: redis is an optional extra)."""
    if cache is None or not any(type(t).__name__ == "RedisCache" for t in cache.tiers):
        return None
    from limpet.cache.redis.backend import RedisCache

    for tier in reversed(cache.tiers):
        if isinstance(tier, RedisCache):
            return tier
    return None


def _flight_store(cache: TieredCache | None) -> FlightStore | None:
    """Leases and notices of the lowest tier that offers them (a Redis tier), if any."""
    for tier in reversed(cache.tiers if cache is not None else ()):
        store = getattr(tier, "flight_store", None)
        if isinstance(store, FlightStore):
            return store
    return None

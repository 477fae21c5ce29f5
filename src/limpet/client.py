"""The Client: construction and the public methods; each delegates to ``limpet.pipeline``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from limpet._checks import check_flag
from limpet.cache.base import CacheBackend
from limpet.cache.generations import Generations
from limpet.cache.tiered import TieredCache
from limpet.config import (
    AdmissionConfig,
    CachePolicy,
    Endpoint,
    FlightConfig,
    RetryConfig,
    Timeouts,
)
from limpet.errors import APIError, ClientClosedError, ConfigurationError
from limpet.http.transport import Transport
from limpet.models import Completion, Embeddings
from limpet.observe.events import EventHook
from limpet.observe.fleet import FleetCounters
from limpet.observe.recorder import Recorder
from limpet.observe.stats import Stats
from limpet.observe.warm import (
    DEFAULT_WARM_CONCURRENCY,
    WarmReport,
    is_embedding,
    warm,
    writes_lost,
)
from limpet.pipeline.calls import RunningCalls
from limpet.pipeline.credentials import CacheScope, credential_scope, generations_scope
from limpet.pipeline.keying import Keying, endpoints_scope
from limpet.pipeline.pipelines import Pipelines
from limpet.pipeline.policy import CacheMode
from limpet.pipeline.request import chat_request, embed_request
from limpet.pipeline.stream import CompletionStream
from limpet.pipeline.validation import check_model
from limpet.pipeline.vectors import DEFAULT_MAX_INPUTS
from limpet.pipeline.wiring import (
    DEFAULT_CACHE,
    DefaultCache,
    attribution_headers,
    cache_control_mark,
    check_max_embed_inputs,
    check_scope,
    config_or_default,
    event_hooks,
    flight_store_of,
    generation_store_of,
    local_generations_of,
    redis_tier_of,
    resolve_admission,
    resolve_cache,
    resolve_cache_control,
    resolve_close_grace,
    resolve_router,
    resolve_ttl,
)
from limpet.providers.pricing import PriceTable
from limpet.providers.prompt_cache import CacheControlConfig
from limpet.routing.base import Router

__all__ = ["DEFAULT_CLOSE_GRACE", "DEFAULT_TTL", "Client"]

logger = logging.getLogger("limpet")

#: Seconds an entry lives unless ``Client(ttl=...)`` or ``complete(ttl=...)`` says otherwise.
DEFAULT_TTL = 3600.0
#: Seconds ``aclose()`` lets running calls finish before cancelling them.
DEFAULT_CLOSE_GRACE = 5.0
#: Seconds ``aclose()`` waits for cancelled calls to unwind before closing anyway.
_UNWIND_TIMEOUT = 5.0

# The default of ``model`` and ``messages``: left out, they fail validation, naming the
# field (InvalidRequestError), rather than the call failing with Python's TypeError.
_REQUIRED: Any = None


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
            False or None sends every request at once (then no endpoint may set a
            ``max_in_flight``, ``rpm`` or ``tpm``: none would be kept).

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
        cache: CacheBackend | TieredCache | DefaultCache | None = DEFAULT_CACHE,
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
        control = resolve_cache_control(auto_cache_control)
        self._router = resolve_router(router, endpoints, base_url, api_key)
        self._endpoints = self._router.endpoints
        self._cache = resolve_cache(cache)
        self._ttl = resolve_ttl(ttl, DEFAULT_TTL)
        self._close_grace = resolve_close_grace(close_grace)
        check_scope(namespace, cache_scope)
        check_max_embed_inputs(max_embed_inputs)
        check_flag("Client.coalesce", coalesce)
        check_flag("Client.fleet_stats", fleet_stats)
        if prices is not None and not isinstance(prices, PriceTable):
            raise ConfigurationError("Client.prices: expected a PriceTable or None")
        self._namespace = namespace
        self._policy = config_or_default("policy", policy, CachePolicy)
        flight = config_or_default("flight", flight, FlightConfig)
        self._transport = Transport(
            timeouts=config_or_default("timeouts", timeouts, Timeouts),
            retry=config_or_default("retry", retry, RetryConfig),
            headers=attribution_headers(app_url, app_title),
            admission=resolve_admission(admission, self._endpoints),
        )
        self._prices = prices if prices is not None else PriceTable(self._fetch_models)
        self._owns_prices = prices is None  # its listing fetch is the Client's to stop
        self.stats = Stats()
        redis_tier = redis_tier_of(self._cache) if fleet_stats else None
        fleet = None if redis_tier is None else FleetCounters(redis_tier)
        admissions = self._transport.admissions
        self._recorder = Recorder(self.stats, fleet, event_hooks(on_event), admissions)
        # Flights are per credential under either cache scope (``Keying.flight_key``).
        own_scope = credential_scope(self._endpoints)
        credential = own_scope if cache_scope == "credential" else ""
        generations = Generations(
            generation_store_of(self._cache),
            local=local_generations_of(self._cache),
            namespace=namespace,
            credential=generations_scope(self._endpoints) if credential else "",
        )
        self._keying = Keying(
            generations, namespace, credential, endpoints_scope(self._endpoints), own_scope
        )
        self._closed = False
        self._calls = RunningCalls()  # past the hit path; aclose() waits for them
        self._closing: asyncio.Future[None] | None = None
        self._pipelines = self._wire(coalesce, flight, control, max_embed_inputs)
        self._chat, self._embeds = self._pipelines.chat, self._pipelines.embeds

    def _wire(
        self,
        coalesce: bool,
        flight: FlightConfig | None,
        control: CacheControlConfig | None,
        max_embed_inputs: int,
    ) -> Pipelines:
        """The pipelines of ``complete()``, ``stream()`` and ``embed()``, over the parts
        ``__init__`` made."""
        return Pipelines(
            cache=self._cache,
            router=self._router,
            transport=self._transport,
            prices=self._prices,
            stats=self.stats,
            recorder=self._recorder,
            keying=self._keying,
            calls=self._calls,
            closed=self._is_closed,
            coalesce=coalesce,
            leases=flight_store_of(self._cache) if coalesce else None,
            flight=flight,
            mark=cache_control_mark(control, self._endpoints),
            marking=control,
            max_embed_inputs=max_embed_inputs,
        )

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self._endpoints)
        return (
            f"Client(endpoints=[{names}], cache={self._cache!r}, ttl={self._ttl:g}, "
            f"coalesce={self._chat.coalescing}, namespace={self._namespace!r})"
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
        tenant: str | None = None,
        **params: Any,
    ) -> Completion:
        """One chat completion, from the cache when it may be.

        Args:
            model: e.g. ``"anthropic/claude-sonnet-4.6"`` (required).
            messages: the chat, OpenAI format (required).
            cache: None (policy decides), ``"bypass"``, ``"refresh"`` or ``"force"``.
            ttl: seconds the answer this call stores may be served from the cache; the
                Client's by default. A property of the entry written: a hit is served
                for its own entry's TTL, whatever the reading call's ``ttl``.
            timeout: seconds for the whole call, as the OpenAI SDK's ``timeout=``: waiting
                for an identical call in flight, every attempt and backoff included.
            extra_headers: sent with this call's upstream request; they enter the key as
                an ``Endpoint``'s headers do (``limpet.pipeline.keying.is_keyed_header``),
                but for credentials, which give the call a scope of its own, attribution
                and tracing headers (``TRANSPORT_ONLY_HEADERS``: ``traceparent``,
                ``X-Request-Id``, ...), which never change an answer.
            extra_body: fields merged into the body (they win), hence into the key.
            tenant: whose answers this call may share: calls of different tenants (or of
                a tenant and of none) never share a cache entry or an upstream request,
                whatever credentials they send, so an application serving its own users
                through one key keeps each user's answers apart. None: the Client's scope.
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
        # By position: cache, ttl, default_ttl, policy, timeout, extra_headers, extra_body,
        # tenant.
        request = chat_request(
            {"model": model, "messages": messages, **params},
            cache,
            ttl,
            self._ttl,
            self._policy,
            timeout,
            extra_headers,
            extra_body,
            tenant,
        )
        completion = self._chat.hit(request)
        if completion is not None:
            self._recorder.finished(request.model, completion, started)
            return completion
        call = request.start()
        work = self._chat.complete(request, call)
        try:
            completion = await self._calls.guarded(call, work, count=True)
        except APIError as exc:
            self._recorder.failed(request.model, exc, started, queued=call.queued)
            raise
        except (asyncio.CancelledError, ClientClosedError) as exc:
            self._recorder.cancelled(request.model, exc, started, queued=call.queued)
            raise
        self._recorder.finished(request.model, completion, started, queued=call.queued)
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
        tenant: str | None = None,
        **params: Any,
    ) -> CompletionStream:
        """One chat completion as a stream of chunks, from the cache when it may be.

        A plain method: the request is validated now, and sent when the first chunk is
        asked for. A cached answer is replayed as chunks shaped like a live stream;
        concurrent identical streams share one upstream stream; ``stream()`` and
        ``complete()`` of one request share one cache entry.

        Args:
            model, messages, cache, ttl, extra_headers, extra_body, tenant, **params: as
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
        request = chat_request(
            {"model": model, "messages": messages, **params},
            cache=cache,
            ttl=ttl,
            default_ttl=self._ttl,
            policy=self._policy,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_body=extra_body,
            tenant=tenant,
            stream=True,
        )
        return self._pipelines.streams.open(request)

    async def embed(
        self,
        *,
        model: str = _REQUIRED,
        input: str | list[str] | list[int] | list[list[int]] = _REQUIRED,
        dimensions: int | None = None,
        encoding_format: str | None = None,
        cache: CacheMode | None = None,
        ttl: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the OpenAI SDK's per-call deadline)
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        **params: Any,
    ) -> Embeddings:
        """Embed ``input`` (POST ``/embeddings``), one cache entry per input.

        Only inputs no tier holds go upstream, each once: duplicates within the call and
        inputs another call is already sending are not sent again; the rest are sent in
        requests of at most ``Endpoint.embedding_batch_size`` inputs and about
        ``embedding_batch_tokens`` tokens (the least of the endpoints', as a request may
        fail over to any), concurrently.

        Args:
            model: e.g. ``"openai/text-embedding-3-small"`` (required).
            input: a text or a list of texts (required), each non-empty; or, as OpenAI
                takes them, a token array (a list of token ids) or a list of token arrays
                (each keyed apart from any text).
            dimensions: the vectors' length, for models that can shorten them.
            encoding_format: how vectors travel (``"base64"``, the default, or
                ``"float"``); ``vectors`` are floats either way.
            cache: None, ``"bypass"``, ``"refresh"`` or ``"force"`` (embeddings are
                deterministic: cached by default).
            ttl, timeout, extra_headers, extra_body, tenant: as ``complete()``.
            **params: any other body field; those that can change a vector enter the key.

        Returns:
            ``Embeddings``: ``.vectors`` in input order, with ``.hits``, ``.misses`` and
            ``.coalesced`` counted per input, ``.usage`` and ``.cost`` of what was sent.

        Raises:
            InvalidRequestError: bad input (naming the index), before any network call.
            EmbeddingBatchError: some inputs failed; ``.vectors`` has the others, which are
                cached, ``.failed`` their positions, ``.usage`` and ``.cost`` what the
                requests that answered cost.
            ClientClosedError: the Client is closed, or was closed during the call.
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        request = embed_request(
            model,
            input,
            params,
            dimensions=dimensions,
            encoding_format=encoding_format,
            cache=cache,
            ttl=ttl,
            default_ttl=self._ttl,
            policy=self._policy,
            max_inputs=self._embeds.embedder.max_inputs,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_body=extra_body,
            tenant=tenant,
        )
        return await self._embeds.run(request)

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
            InvalidRequestError: ``concurrency`` is not an int >= 1, or ``progress`` is
                not callable (before any request is read).
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        cache = self._cache
        before = 0 if cache is None else writes_lost(cache)
        report = await warm(self._warm_one, requests, concurrency=concurrency, progress=progress)
        if cache is not None:
            await cache.flush()  # the writes queued have landed, or failed
            report.settle(writes_lost(cache) - before)
        return report

    async def _warm_one(self, **request: Any) -> Completion | Embeddings:
        if is_embedding(request):
            return await self.embed(**request)
        return await self.complete(**request)

    async def invalidate(self, model: str | None = None) -> None:
        """Stop serving cached answers for ``model``, or for every model when None.

        A generation bump, not a scan: old entries are never read again and expire by TTL.
        With a Redis tier, other processes follow within about a second; other Clients
        whose in-process caches share a tier with this one's follow at once. It reaches this
        Client's cache scope: with ``cache_scope="credential"``, only the entries of its
        credentials; with ``"namespace"``, every entry of the namespace.

        Raises:
            ClientClosedError: the Client is closed (its cache too: nothing would change).
        """
        if model is not None:
            check_model(model)
        if self._closed:
            raise ClientClosedError("Client is closed")
        with self._calls.counted():  # aclose() waits for it before closing the cache
            await self._keying.generations.bump(model)

    async def forget(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        cache: CacheMode | None = None,
        ttl: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (complete()'s, accepted alike)
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        tenant: str | None = None,
        **params: Any,
    ) -> str:
        """Delete the cached answer of one request from every tier of this Client;
        returns its key.

        Takes the keyword arguments of the ``complete()`` or ``stream()`` call whose
        answer it deletes: ``extra_body``, ``extra_headers`` (a call's own credentials
        scope its entries, and headers that can change an answer enter its key) and
        ``tenant`` shape the key as they do there; ``cache``, ``ttl`` and ``timeout`` are
        checked and otherwise ignored, as they never enter the key.

        Other processes' in-memory tiers keep their copy until it expires; to stop every
        process serving a model's answers, ``invalidate(model)``.

        Raises:
            InvalidRequestError: as ``complete()`` would for these arguments.
            ClientClosedError: the Client is closed (its cache too: nothing would change).
        """
        if self._closed:
            raise ClientClosedError("Client is closed")
        # As stream() builds its request: a stream's arguments are as good as complete()'s.
        request = chat_request(
            {"model": model, "messages": messages, **params},
            cache=cache,
            ttl=ttl,
            default_ttl=self._ttl,
            policy=self._policy,
            timeout=timeout,
            extra_headers=extra_headers,
            extra_body=extra_body,
            tenant=tenant,
            stream=True,
        )
        with self._calls.counted():  # aclose() waits for it before closing the cache
            key = await self._keying.of(request.body, request.headers, request.tenant)
            if self._cache is not None:
                await self._cache.delete(key)
        return key

    async def aclose(self) -> None:
        """Stop taking calls, let running ones finish, then close what the Client owns.

        New calls raise ``ClientClosedError`` at once. Running calls (and open streams)
        get ``close_grace`` seconds to finish; those still running are then stopped and
        raise ``ClientClosedError``. A stream its reader left open between chunks and
        went (its task ended, say after a bare ``break``, or it is the task calling
        this) gets no grace: it is closed at once, counted cancelled, and a later read
        raises ``ClientClosedError``. Upstream requests that callers left running (an
        embedding request its caller's ``timeout`` gave up on, a stream let end after
        its reader left) get what is left of the grace: paid for, their answers are
        stored. Then pending cache writes land, flight leases are
        released, and the cache and the HTTP session close. When it returns, nothing of
        the Client runs. Idempotent; concurrent calls all wait for the one closing.
        """
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close(asyncio.current_task()))
        # Shielded: a caller cancelled while waiting does not leave the Client half-closed.
        await asyncio.shield(self._closing)

    def _is_closed(self) -> bool:
        return self._closed

    async def _close(self, closer: asyncio.Task[Any] | None) -> None:
        await self._stop_calls(closer)
        await self._keying.generations.aclose()
        # Before the cache: the router's last affinity writes go to its Redis.
        await self._router.aclose()
        await self._recorder.aclose()
        if self._owns_prices:  # a fetch of the listing under way: before the session
            await self._prices.aclose()
        try:
            if self._cache is not None:
                await self._cache.aclose()
        finally:
            await self._transport.aclose()

    async def _stop_calls(self, closer: asyncio.Task[Any] | None) -> None:
        """Wait up to ``close_grace`` for running calls, then stop the rest and wait
        until they have unwound (released leases, landed or dropped their writes); what
        they left running upstream gets the rest of the grace. Streams whose readers
        have gone without closing them (``closer``, the task closing the Client, reads
        none) are closed at once: nothing would end them in the grace."""
        clock = asyncio.get_running_loop().time
        grace_ends = clock() + self._close_grace
        streams = self._pipelines.streams
        await streams.close_gone(closer)
        await self._calls.stop(self._close_grace)
        await streams.close_rest()
        # The callers first: leaving, they cancel the shared calls no one else waits for.
        if not await self._calls.unwound(_UNWIND_TIMEOUT):
            logger.warning("limpet: calls still running %gs after aclose()", _UNWIND_TIMEOUT)
        await self._pipelines.settle(grace_ends - clock())
        # Then what is left (a stream held open but not read), and wait for it all to stop.
        await self._pipelines.aclose()

    async def _fetch_models(self) -> object:
        return await self._transport.get_json(self._endpoints[0], "/models")

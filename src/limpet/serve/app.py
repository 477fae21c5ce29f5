"""The proxy: an ``aiohttp.web`` application that answers OpenAI's API through one
``Client``, so every caller shares its cache and single-flight.

The caller's ``Authorization`` header goes upstream as is and scopes the cache entries
and flights of its calls: callers with different keys never share an answer. Routes:
``POST /v1/chat/completions`` (JSON, or server-sent events with ``"stream": true``),
``POST /v1/embeddings`` (cached, coalesced and batched per input), ``GET /v1/models``
(the first upstream's, kept briefly per credential), ``GET /healthz`` and, when asked
for, ``GET /metrics``. With client keys, every route but ``/healthz`` answers only a
caller presenting one (``/metrics`` too: it tells every tenant's calls and spend).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from limpet._urls import join_url
from limpet.cache.base import CacheBackend
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.client import Client
from limpet.config import RetryConfig
from limpet.errors import APIConnectionError, InvalidRequestError, LimpetError
from limpet.http.chunks import StreamChunk
from limpet.models import CacheStatus, Completion
from limpet.pipeline.stream import CompletionStream
from limpet.routing.sticky import StickyRouter
from limpet.serve.body import BodyTimeoutError, json_object
from limpet.serve.config import ServeConfig, endpoints_of
from limpet.serve.errors import error_headers, error_of, openai_error, retry_headers
from limpet.serve.logs import quiet_request_lines
from limpet.serve.malformed import answer_malformed_requests
from limpet.serve.protocol import (
    answer_headers,
    as_served,
    call_options,
    client_key_allowed,
    client_tenant,
    embeddings_body,
    embeddings_headers,
    encoding_problem,
    from_this_host,
    has_money,
    split_body,
    undecodable_header,
    usage_wanted,
    vector_encoding,
)
from limpet.serve.upstream import MetricsRegistry, ModelListings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SHUTDOWN_GRACE",
    "create_app",
    "run",
]

logger = logging.getLogger("limpet")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8400
#: Seconds in-flight requests get to finish after SIGTERM or SIGINT.
DEFAULT_SHUTDOWN_GRACE: Final = 30.0
# Seconds a ``/v1/models`` request upstream may take.
_MODELS_TIMEOUT: Final = 30.0
# Long contexts make big bodies; aiohttp's default (1 MiB) would refuse many.
_MAX_BODY_BYTES: Final = 64 * 2**20
_DONE: Final = b"data: [DONE]\n\n"


def create_app(config: ServeConfig) -> web.Application:
    """The proxy application; its Client (and, with ``fake``, its gateway) starts with
    the application and is closed, pending cache writes landed, when it stops."""
    quiet_request_lines()  # a request aiohttp cannot parse is logged without its lines
    app = web.Application(
        client_max_size=_MAX_BODY_BYTES,
        middlewares=[_openai_errors],
        # A body is never unpacked: one sent compressed is refused (``encoding_problem``),
        # and aiohttp would otherwise unpack it as it reads it, a 415 answered or not.
        # A connection waiting for a request's headers (idle between requests, or sent
        # them a byte at a time) is closed after ``body_timeout``: aiohttp's own bound on
        # it is an hour.
        handler_args={"auto_decompress": False, "keepalive_timeout": config.body_timeout},
    )
    answer_malformed_requests(app)  # in OpenAI's shape, not quoting the request
    app[_CONFIG] = config
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    if config.metrics:
        app.router.add_get("/metrics", _metrics)
    return app


def run(
    config: ServeConfig,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    reuse_port: bool = False,
    on_ready: Callable[[], object] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, let in-flight requests finish
    within ``shutdown_grace`` seconds, close the Client and return. With ``reuse_port``,
    other processes may listen on the same port (``SO_REUSEPORT``): the kernel spreads
    the connections among them. ``on_ready`` is called once the port is listened on."""

    def announce(_: str) -> None:
        where = f"http://{host}:{port}"
        print(f"limpet serve: {os.getpid()} listening on {where}", file=sys.stderr, flush=True)
        if on_ready is not None:
            on_ready()

    web.run_app(
        create_app(config),
        host=host,
        port=port,
        shutdown_timeout=shutdown_grace,
        access_log=None,  # request lines only would say little; keys never go to logs
        print=announce,
        reuse_port=reuse_port or None,
    )


@dataclass(frozen=True, slots=True)
class _Proxy:
    client: Client
    models: ModelListings
    config: ServeConfig
    registry: MetricsRegistry | None

    def refusal(self, request: web.Request) -> web.Response | None:
        """A 401 for a caller without one of the client keys, when there are some."""
        keys = self.config.client_keys
        if not keys or client_key_allowed(request.headers.get("Authorization"), keys):
            return None
        # As OpenAI answers a wrong key: the type is the kind, the code the reason.
        error = openai_error(
            "a valid API key of this proxy is required",
            "invalid_request_error",
            code="invalid_api_key",
        )
        return _json_response(401, error)

    @property
    def max_attempts(self) -> int:
        """The upstream attempts the Client makes of a call at most (per endpoint)."""
        return (self.config.retry or RetryConfig()).max_attempts

    @property
    def sends_own_key(self) -> bool:
        """Whether the proxy sends its own key upstream rather than each caller's."""
        return bool(self.config.upstream_key)

    def options(self, request: web.Request) -> dict[str, Any]:
        """The Client options of ``request``: its own key goes upstream, unless the
        proxy sends its own; then, with client keys, the one it presented names its
        tenant (``client_tenant``), unless they share."""
        config = self.config
        options = call_options(request.headers, forward_authorization=not config.upstream_key)
        if config.client_keys and not config.share_across_client_keys:
            options["tenant"] = client_tenant(request.headers.get("Authorization"))
        return options

    def authorization(self, request: web.Request) -> str | None:
        """What ``/models`` is fetched with."""
        if self.config.upstream_key:
            return f"Bearer {self.config.upstream_key}"
        return request.headers.get("Authorization")


_CONFIG: Final = web.AppKey("config", ServeConfig)
_PROXY: Final = web.AppKey("proxy", _Proxy)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    config = app[_CONFIG]
    async with contextlib.AsyncExitStack() as stack:
        upstreams = config.upstreams
        if config.fake:
            from limpet.testing import FakeGateway

            gateway = await stack.enter_async_context(FakeGateway(endpoints=("fake",)))
            upstreams = (gateway.base_url("fake"),)
        registry = MetricsRegistry() if config.metrics else None
        # Each caller's own key goes upstream unless the proxy sends its own: then a
        # refusal of it (a bad key, a spent quota) is that caller's, not the upstream's.
        router = StickyRouter(
            endpoints_of(upstreams, config.upstream_key),
            callers_credentials=not config.upstream_key,
        )
        client = Client(
            router=router,
            on_event=None if registry is None else registry.hook,
            cache=_cache(config),
            namespace=config.namespace,
            auto_cache_control=config.auto_cache_control,
            retry=config.retry,
        )
        stack.push_async_callback(client.aclose)  # drains pending cache writes
        timeout = aiohttp.ClientTimeout(total=_MODELS_TIMEOUT)
        session = await stack.enter_async_context(
            # No cookies kept, as the Client keeps none: every caller's listing is fetched
            # on its own key, with nothing of another caller's.
            aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
        )
        models_url = join_url(upstreams[0], "/models")
        clock = asyncio.get_running_loop().time
        models = ModelListings(session, models_url, config.models_ttl, clock)
        app[_PROXY] = _Proxy(client, models, config, registry)
        yield


def _cache(config: ServeConfig) -> TieredCache:
    shared: CacheBackend | None = None
    if config.redis:
        from limpet.cache.redis.backend import DEFAULT_PREFIX, RedisCache

        shared = RedisCache.from_url(
            config.redis, prefix=config.prefix or DEFAULT_PREFIX, hmac_key=config.hmac_key
        )
    elif config.memcached:
        from limpet.cache.memcached.backend import DEFAULT_PREFIX as PREFIX
        from limpet.cache.memcached.backend import MemcachedCache

        shared = MemcachedCache.from_url(
            config.memcached, prefix=config.prefix or PREFIX, hmac_key=config.hmac_key
        )
    # A TieredCache signs with its shared tier's key (``shared_hmac_key``).
    return TieredCache(MemoryCache()) if shared is None else TieredCache(MemoryCache(), shared)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    # Every tenant's models, calls, tokens and dollars: for a client key, as the API is;
    # without client keys (callers bring their own), for this host alone (its scraper).
    proxy = request.app[_PROXY]
    refusal = proxy.refusal(request)
    if refusal is not None:
        return refusal
    if not proxy.config.client_keys and not from_this_host(request.remote):
        error = openai_error(
            "/metrics tells every caller's spend: it is served to this host alone, "
            "unless the proxy has client keys (--client-keys-file)",
            "permission_error",
        )
        return _json_response(403, error)
    registry = proxy.registry
    assert registry is not None  # the route exists only with metrics
    body, content_type = registry.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def _openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413...) and the proxy's faults in OpenAI's shape;
    a fault is logged without the request's headers, which hold the caller's key. A
    credential header that is not UTF-8 is refused on every route, before any handler."""
    problem = undecodable_header(request.headers)
    if problem is not None:
        status, body = error_of(problem)
        return _json_response(status, body)
    refused = encoding_problem(request.headers)
    if refused is not None:
        body = openai_error(refused, "invalid_request_error")
        return _json_response(415, body)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        body = openai_error(exc.reason, kind)
        allow = exc.headers.get("Allow")  # a 405 says what is allowed (RFC 9110)
        return _json_response(exc.status, body, None if allow is None else {"Allow": allow})
    except ConnectionResetError:
        # The caller hung up with its body still coming: no fault of the proxy's, and no
        # one left to tell (raised, aiohttp would log it as an error).
        body = openai_error("the request's body was cut short", "invalid_request_error")
        return _json_response(400, body)
    except Exception:
        logger.exception("limpet serve: %s %s failed", request.method, request.path)
        status, body = error_of(RuntimeError())
        return _json_response(status, body)


async def _models(request: web.Request) -> web.Response:
    proxy = request.app[_PROXY]
    refusal = proxy.refusal(request)
    if refusal is not None:
        return refusal
    try:
        status, body = await proxy.models.get(proxy.authorization(request))
    except APIConnectionError:
        status, body = 502, _json_error("the upstream's /models could not be reached")
    else:
        if status != 200:  # not the upstream's body: it may echo the credential it was sent
            body = _json_error(f"the upstream's /models answered with status {status}")
            if status < 400:  # a 201, 204 or 3xx is no listing, and no error the caller made
                status = 502
    return web.Response(status=status, body=body, content_type="application/json")


def _json_response(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON answer of ``status`` (an OpenAI-shaped error, mostly)."""
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _json_error(message: str) -> bytes:
    return orjson.dumps(openai_error(message, "api_error"))


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    proxy = request.app[_PROXY]
    refusal = proxy.refusal(request)
    if refusal is not None:
        return refusal
    client = proxy.client
    try:
        fields, reserved = split_body(await json_object(request, proxy.config.body_timeout))
        options = proxy.options(request)
        streaming = fields.pop("stream", False)
        if streaming is True:
            # As OpenAI streams: the usage chunk only to a caller who asked for it (the
            # Client asks upstream for usage whatever a caller says, and keeps it from
            # the chunks of a caller who declined).
            asked = fields.get("stream_options")
            include_usage = usage_wanted(asked)  # an object with a bool, or refused
            fields["stream_options"] = {**(asked or {}), "include_usage": include_usage}
            stream = client.stream(**fields, extra_body=reserved, **options)
            return await _stream(request, stream)
        if streaming not in (False, None):
            raise InvalidRequestError("stream", "true or false", streaming)
        completion = await client.complete(**fields, extra_body=reserved, **options)
    except LimpetError as exc:
        return _error_response(exc, proxy)
    return _json_answer(completion)


async def _embeddings(request: web.Request) -> web.Response:
    proxy = request.app[_PROXY]
    refusal = proxy.refusal(request)
    if refusal is not None:
        return refusal
    try:
        fields, reserved = split_body(await json_object(request, proxy.config.body_timeout))
        # How the caller wants its vectors is the proxy's to honour (checked before anything
        # is paid for); upstream, the Client picks the cheaper wire format itself.
        encoding = vector_encoding(fields.pop("encoding_format", None))
        options = proxy.options(request)
        result = await proxy.client.embed(**fields, extra_body=reserved, **options)
        body = embeddings_body(result, encoding)
    except LimpetError as exc:
        return _error_response(exc, proxy)
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers=embeddings_headers(result)
    )


def _json_answer(completion: Completion) -> web.Response:
    return web.Response(
        body=answer_json(as_served(completion.raw, completion.cache)),
        content_type="application/json",
        headers=answer_headers(completion),
    )


async def _stream(request: web.Request, stream: CompletionStream) -> web.StreamResponse:
    """Re-emit the stream's chunks as they come, as server-sent events. What the headers
    of a JSON answer say (``X-Limpet-Cache``...) is only known at the end of a stream: it
    comes as an SSE comment before ``[DONE]``, which SSE clients ignore."""
    proxy = request.app[_PROXY]
    async with stream:  # leaving it, this reader lets go; its flight's others go on
        try:
            first = await anext(stream, None)
        except LimpetError as exc:
            return _error_response(exc, proxy)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        # The caller may have hung up while the first chunk was awaited: then the headers
        # meet a closing transport, as the chunks would.
        with contextlib.suppress(ConnectionResetError):  # the caller hung up
            await response.prepare(request)
            await _relay(response, first, stream, own_key=proxy.sends_own_key)
    return response


async def _relay(
    response: web.StreamResponse,
    first: StreamChunk | None,
    stream: CompletionStream,
    *,
    own_key: bool,
) -> None:
    # A chunk that says dollars (its usage's ``cost``) is told as this caller is served
    # (``_told``): at once when the stream says how from its first chunk (a replay); else
    # (a live stream, whose status comes at its end) it waits for the next chunk or the
    # end, where what it is told is known, or known as it stands (``coalesced``). Other
    # chunks are never held.
    held: dict[str, Any] | None = None
    try:
        if first is not None:
            async for chunk in _chained(first, stream):
                if held is not None:
                    await response.write(_event(_told(held, stream)))
                    held = None
                raw = chunk.raw
                if not has_money(raw):
                    await response.write(_event(raw))
                elif stream.cache is None:
                    held = raw
                else:
                    await response.write(_event(_told(raw, stream)))
        completion = stream.completion
        if held is not None:
            await response.write(_event(_told(held, stream)))
        if completion is not None:
            await response.write(_served_comment(completion))
        await response.write(_DONE)
    except LimpetError as exc:
        if held is not None:
            await response.write(_event(_told(held, stream)))
        await response.write(_event(error_of(exc, own_key=own_key)[1]))  # as OpenAI does
    await response.write_eof()


async def _chained(first: StreamChunk, stream: CompletionStream) -> AsyncIterator[StreamChunk]:
    yield first
    async for chunk in stream:
        yield chunk


def _told(chunk: dict[str, Any], stream: CompletionStream) -> dict[str, Any]:
    """``chunk`` as the caller of ``stream`` is told it (``as_served``): by how the stream
    was served once it ended, or is from its first chunk (a replay); by how it is served
    as it stands (a live stream another caller pays for); else as it came."""
    completion = stream.completion
    status = completion.cache if completion is not None else stream.cache
    if status is None and stream.coalesced:
        status = CacheStatus.COALESCED
    return chunk if status is None else as_served(chunk, status)


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + answer_json(data) + b"\n\n"


def answer_json(value: object) -> bytes:
    """An upstream's answer (or chunk) as JSON: as orjson writes it, or, for one it
    cannot (a lone surrogate, which a ``LooseJSON`` may hold), as the standard library
    does, escaped as the upstream sent it."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


def _served_comment(completion: Completion) -> bytes:
    fields = " ".join(f"{name}={value}" for name, value in answer_headers(completion).items())
    return f": {fields}\n\n".encode()


def _error_response(exc: LimpetError, proxy: _Proxy) -> web.Response:
    status, body = error_of(exc, own_key=proxy.sends_own_key)
    response = web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={
            **error_headers(exc, own_key=proxy.sends_own_key),
            **retry_headers(exc, max_attempts=proxy.max_attempts),
        },
    )
    if isinstance(exc, BodyTimeoutError):
        # Said so (Connection: close): aiohttp serves nothing more on a connection whose
        # body was left unread, and a caller would otherwise send its next request there.
        response.force_close()
    return response

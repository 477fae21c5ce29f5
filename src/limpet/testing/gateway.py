"""``FakeGateway``: a local OpenAI/OpenRouter-compatible gateway for tests, demos and benchmarks.

It runs a real aiohttp server on loopback, so a client under test goes through its whole
HTTP stack: connection pooling, timeouts, retries, SSE parsing, error mapping. Each
endpoint stands for one provider instance with its own counters, latency and faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self

import orjson
from aiohttp import web

from limpet.testing.catalog import DEFAULT_MODELS, UNKNOWN_MODEL_PRICE, FakeModel
from limpet.testing.chat_answer import answer_chat
from limpet.testing.embeddings import FakeEmbeddings, add_embedding_routes
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.faults import (
    DelayFault,
    DropConnectionFault,
    EarlyDoneFault,
    EchoAuthorizationFault,
    GenerationErrorFault,
    MalformedBodyFault,
    NoUsageFault,
    StatusFault,
    StreamErrorFault,
    WrongShapeFault,
)
from limpet.testing.native import add_native_routes
from limpet.testing.provider_cache import PromptCacheModel, PromptCacheRefusal
from limpet.testing.responses import (
    bad_body,
    drop_connection,
    echo_authorization,
    error_bodies,
    error_response,
    failed_generation,
    json_response,
    send_stream,
    status_fault_response,
)
from limpet.testing.wire import Answer, request_problem, stream_usage_requested

# aiohttp's default of 1 MiB would refuse the long prompts that prefix-cache benchmarks send.
_MAX_BODY_BYTES = 64 * 1024 * 1024

# Handlers wake from simulated latency when the gateway closes, so a test that gave up
# on a delayed answer never holds up shutdown; this bounds anything else still running.
_SHUTDOWN_GRACE = 1.0


class FakeGateway:
    """A local OpenAI/OpenRouter-compatible gateway on ``127.0.0.1`` and a free port.

    Endpoint ``name`` serves ``POST /{name}/v1/chat/completions`` and ``GET
    /{name}/v1/models``. Replies are filler text: a pure function of the request at
    temperature 0 (or with a ``seed``), sampled otherwise from an RNG seeded by ``seed``,
    so whole runs are reproducible. ``usage`` follows the OpenRouter dialect and ``cost``
    is priced from the ``/models`` listing.

    Example:
        >>> async with FakeGateway(endpoints=("a", "b")) as gw:
        ...     gw.endpoint("a").fail(429, retry_after=0)   # the next request to "a" gets 429
        ...     async with Client(base_url=gw.base_url("a")) as client:   # .../a/v1
        ...         c = await client.complete(model="openai/gpt-5-mini", temperature=0,
        ...                                   messages=[{"role": "user", "content": "hi"}])
        ...     assert gw.endpoint("a").calls == 2   # the 429, then the retry

    Args:
        endpoints: endpoint names, each a URL path segment.
        latency: initial ``latency`` of every endpoint, in seconds.
        seed: seeds sampled (temperature > 0) replies.
        api_key: when set, chat requests must send ``Authorization: Bearer <api_key>``.
        models: the ``/models`` catalogue and price table; ``DEFAULT_MODELS`` when None.
            Models missing from it are still answered, priced at ``UNKNOWN_MODEL_PRICE``.
        prompt_cache: makes each endpoint's prompt-cache model; none caches by default.
            Pass ``ProviderPromptCache`` for the providers' own rules, one cache each.
        clock: Unix time, for ``created`` and prompt-cache TTLs; inject one to control it.

    Attributes:
        clock: the clock given, settable.
    """

    __slots__ = (
        "_api_key",
        "_closing",
        "_draws",
        "_endpoints",
        "_models",
        "_runner",
        "_seed",
        "_url",
        "clock",
        "embeddings",
    )

    def __init__(
        self,
        endpoints: Iterable[str] = ("a", "b"),
        *,
        latency: float = 0.0,
        seed: int = 0,
        api_key: str | None = None,
        models: Iterable[FakeModel] | None = None,
        prompt_cache: Callable[[], PromptCacheModel] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = list(endpoints)
        if not names:
            raise ValueError("a FakeGateway needs at least one endpoint")
        for name in names:
            if not name or "/" in name or names.count(name) > 1:
                raise ValueError(f"endpoint names must be unique path segments, got {name!r}")
        self._endpoints = {
            name: FakeEndpoint(
                name, latency=latency, prompt_cache=prompt_cache() if prompt_cache else None
            )
            for name in names
        }
        self._models = {model.id: model for model in (DEFAULT_MODELS if models is None else models)}
        self._seed = seed
        self._api_key = api_key
        self.clock = clock
        self._draws = 0
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._closing = asyncio.Event()
        self.embeddings = FakeEmbeddings(self)  # POST /{name}/v1/embeddings

    def __repr__(self) -> str:
        where = self._url or "not started"
        return f"FakeGateway({where}, endpoints={list(self._endpoints)})"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind ``127.0.0.1`` on a free port and start serving.

        Raises:
            RuntimeError: it was already started.
        """
        if self._runner is not None:
            raise RuntimeError("FakeGateway is already started")
        app = web.Application(middlewares=[error_bodies], client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/{endpoint}/v1/chat/completions", self._chat)
        app.router.add_get("/{endpoint}/v1/models", self._list_models)
        add_native_routes(app, self)  # Anthropic Messages, Gemini cachedContents
        add_embedding_routes(app, self.embeddings)
        # handler_cancellation: a client that hangs up stops the work, as with a real server.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        self._closing.clear()
        self._runner = runner
        self._url = f"http://{host}:{port}"

    async def aclose(self) -> None:
        """Stop serving and close every connection. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: the gateway is not started.
        """
        if self._url is None or self._runner is None:
            raise RuntimeError("FakeGateway is not started")
        return self._url

    def base_url(self, endpoint: str) -> str:
        """The OpenAI-compatible base URL of an endpoint: ``{url}/{endpoint}/v1``.

        Raises:
            KeyError: no such endpoint.
        """
        return f"{self.url}/{self.endpoint(endpoint).name}/v1"

    def endpoint(self, name: str) -> FakeEndpoint:
        """The state of one endpoint.

        Raises:
            KeyError: no such endpoint.
        """
        try:
            return self._endpoints[name]
        except KeyError:
            raise KeyError(f"no endpoint {name!r}; have {list(self._endpoints)}") from None

    @property
    def endpoints(self) -> Mapping[str, FakeEndpoint]:
        """Every endpoint by name, in the order given."""
        return MappingProxyType(self._endpoints)

    @property
    def models(self) -> Mapping[str, FakeModel]:
        """The catalogue by model id."""
        return MappingProxyType(self._models)

    @property
    def total_calls(self) -> int:
        """Chat requests received by all endpoints together."""
        return sum(endpoint.calls for endpoint in self._endpoints.values())

    @property
    def total_completions(self) -> int:
        """Chat completions answered by all endpoints together."""
        return sum(endpoint.completions for endpoint in self._endpoints.values())

    def reset(self) -> None:
        """Reset every endpoint (``FakeEndpoint.reset``) and restart the sampling RNG."""
        for endpoint in self._endpoints.values():
            endpoint.reset()
        self._draws = 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._endpoints.get(request.match_info["endpoint"])
        if endpoint is None:
            return _unknown_endpoint(request)
        refusal = endpoint.refusal(self.clock())
        if refusal is not None:
            endpoint.calls += 1
            return error_response(429, "Rate limit exceeded", headers=refusal)
        endpoint.in_flight += 1
        endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
        try:
            return await self._serve_chat(request, endpoint)
        finally:
            endpoint.in_flight -= 1

    async def _serve_chat(self, request: web.Request, endpoint: FakeEndpoint) -> web.StreamResponse:
        endpoint.calls += 1
        await endpoint.answer_gate()
        headers = request.headers.copy()
        if "Authorization" in headers:
            # Tests print what they compare; a key must not show up in their output.
            headers["Authorization"] = "Bearer ***"
        endpoint.last_headers = headers
        if not self._authorised(request):
            missing = "Authorization" not in request.headers
            return error_response(
                401, "No auth credentials found" if missing else "User not found."
            )
        if not endpoint.up:
            return error_response(503, f"Endpoint {endpoint.name!r} is down")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "Request body is not valid JSON")
        if isinstance(body, dict):
            endpoint.requests.append(body)
        problem = request_problem(body)
        if problem is not None:
            return error_response(400, problem)
        fault = endpoint.take_fault()
        stream = body.get("stream") is True
        if isinstance(fault, StatusFault):
            await self._pause(fault.after)
            return status_fault_response(fault)
        if isinstance(fault, EchoAuthorizationFault):
            return await echo_authorization(request, fault, stream=stream)
        if isinstance(fault, DropConnectionFault) and (not stream or fault.after_chunks is None):
            return drop_connection(request)
        if isinstance(fault, StreamErrorFault) and not stream:
            return error_response(fault.status, fault.message)
        if isinstance(fault, DelayFault):
            await self._pause(fault.seconds)
        if isinstance(fault, MalformedBodyFault | WrongShapeFault):
            await self._pause(endpoint.latency)
            return await bad_body(request, fault, stream=stream)
        try:
            answer, latency = self._answer(endpoint, body)
        except PromptCacheRefusal as refusal:
            return error_response(400, str(refusal))
        await self._pause(latency)
        if stream:
            cut = (
                fault
                if isinstance(fault, StreamErrorFault | DropConnectionFault | EarlyDoneFault)
                else None
            )
            if isinstance(fault, GenerationErrorFault):
                cut = StreamErrorFault(0, fault.status, fault.message)
            usage = endpoint.always_stream_usage or stream_usage_requested(body)
            usage = usage and not isinstance(fault, NoUsageFault)
            return await send_stream(request, endpoint, answer, cut, include_usage=usage)
        if isinstance(fault, GenerationErrorFault):
            return json_response(200, failed_generation(answer, fault), generation_id=answer.id)
        completion = answer.completion()
        if isinstance(fault, NoUsageFault):
            del completion["usage"]
        endpoint.completions += 1
        quota = endpoint.quota_headers(self.clock())
        return json_response(200, completion, generation_id=answer.id, headers=quota)

    def _answer(self, endpoint: FakeEndpoint, body: dict[str, Any]) -> tuple[Answer, float]:
        """The reply to a valid request, and how long the endpoint takes to give it."""
        model = body["model"]
        price = self._models[model].price if model in self._models else UNKNOWN_MODEL_PRICE
        return answer_chat(endpoint, body, price=price, now=self.clock(), rng=self._rng)

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._endpoints.get(request.match_info["endpoint"])
        if endpoint is None:
            return _unknown_endpoint(request)
        endpoint.model_listings += 1
        return json_response(200, {"data": [model.listing() for model in self._models.values()]})

    def _authorised(self, request: web.Request) -> bool:
        if self._api_key is None:
            return True
        expected = f"Bearer {self._api_key}".encode()
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, expected)

    def _rng(self, seed: int | None) -> random.Random:
        if seed is not None:
            return random.Random(seed)
        # A string seed hashes the same in every process, unlike hash()-based seeding.
        self._draws += 1
        return random.Random(f"{self._seed}:{self._draws}")

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


def _unknown_endpoint(request: web.Request) -> web.Response:
    return error_response(404, f"No endpoint {request.match_info['endpoint']!r} on this gateway")

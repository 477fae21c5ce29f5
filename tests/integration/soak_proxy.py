"""The proxy soak's parts (``tests/integration/test_soak_proxy.py``): the gateway that
remembers which credential each answer was produced under, the tap that keeps every byte
a tenant's SDK read, two ``limpet serve`` apps on loopback, the workload drawn from a
seed, and a run of waves. What the test does to the proxies' Clients (their shared tier,
its killed connections and outages, the wave launcher) is ``soak_adversity``'s."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httpx2
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from limpet import Client
from limpet.serve import ServeConfig, create_app
from limpet.serve import app as serve_app
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.faults import EchoShape
from limpet.testing.wire import Answer
from tests.integration.soak import SpyGateway, prompts
from tests.integration.soak_adversity import (
    FLIGHT,
    RETRY,
    Launch,
    Shared,
    Wave,
    draw_kills,
    draw_outage,
    landed,
    play,
    queue_faults,
)
from tests.loopback import served

SEEDS = (5, 17, 29)
TENANTS = 4
REQUESTS = 9  # three texts, each asked three near-identical ways (``soak.prompts``)
WAVES = 6
CALLS_PER_WAVE = 20  # besides the chorus: every tenant asking one prompt at both proxies
LATENCY = 0.02  # seconds per upstream answer: calls overlap, waiters coalesce
CANCEL_TURNS = 150  # an HTTP call through a proxy takes about this many turns
CALL_HEADER = "X-Soak-Call"  # names the call a response answers, for the tap
ECHOES = ("json", "text", "header", "sse")  # where an upstream echoes the caller's key

Kind = Literal["complete", "stream"]
Stop = Literal["none", "cancel", "abandon"]

_AUTHORIZATION: contextvars.ContextVar[str | None] = contextvars.ContextVar("authorization")


class TenantSpy(SpyGateway):
    """A ``SpyGateway`` that also remembers the ``Authorization`` each answer was produced
    for: the credential a proxy forwarded."""

    def __init__(self, ticks: Iterator[int], **options: Any) -> None:
        super().__init__(ticks, **options)
        self.sent_with: dict[str, str | None] = {}  # answer id -> Authorization

    async def _serve_chat(self, request: web.Request, endpoint: FakeEndpoint) -> web.StreamResponse:
        _AUTHORIZATION.set(request.headers.get("Authorization"))  # this request's task only
        return await super()._serve_chat(request, endpoint)

    def _answer(self, endpoint: FakeEndpoint, body: dict[str, Any]) -> tuple[Answer, float]:
        answer, latency = super()._answer(endpoint, body)
        self.sent_with[answer.id] = _AUTHORIZATION.get()
        return answer, latency


# -- what a tenant received --------------------------------------------------------------


@dataclass
class Received:
    """One response as a tenant's SDK read it: its headers, and its body as far as read."""

    status: int
    headers: dict[str, str]
    raw_headers: bytes
    body: bytearray = field(default_factory=bytearray)

    def served(self) -> dict[str, str]:
        """What the proxy said of how it served the answer (names in lower case): its
        ``X-Limpet-*`` headers, or for a stream the SSE comment that carries them."""
        for line in bytes(self.body).splitlines():
            if line.startswith(b": "):
                pairs = (field.split("=", 1) for field in line[2:].decode().split())
                return {name.lower(): value for name, value in pairs}
        return {name: value for name, value in self.headers.items() if name.startswith("x-limpet")}


class _Tee(httpx2.AsyncByteStream):
    def __init__(self, stream: httpx2.AsyncByteStream, into: bytearray) -> None:
        self.stream = stream
        self.into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            self.into.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class Tap(httpx2.AsyncBaseTransport):
    """The SDK's transport, keeping what it reads of each response by ``CALL_HEADER``."""

    def __init__(self, received: dict[int, Received]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.received = received

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        raw = b"\n".join(name + b": " + value for name, value in response.headers.raw)
        headers = {name.lower(): value for name, value in response.headers.items()}
        got = Received(response.status_code, headers, raw)
        self.received[int(request.headers[CALL_HEADER])] = got
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, got.body),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the proxies -------------------------------------------------------------------------


@dataclass
class Fleet:
    """Two proxies: their URLs, their Clients, and the requests they are handling."""

    urls: list[str] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    handling: set[asyncio.Future[None]] = field(default_factory=set)

    async def idle(self) -> None:
        """Returns once no request is being handled, and no shared call of either Client
        (one whose callers all left) runs on."""
        while self.handling:
            await asyncio.wait(list(self.handling))
        await asyncio.gather(*map(landed, self.clients))

    def tracked(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def tracked(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            done = asyncio.get_running_loop().create_future()
            self.handling.add(done)
            try:
                return await handler(request)
            finally:
                self.handling.discard(done)
                done.set_result(None)

        return tracked


@contextlib.asynccontextmanager
async def serving(
    gateway: TenantSpy, shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Fleet]:
    """Two ``limpet serve`` apps on loopback, forwarding their callers' keys to ``gateway``;
    each Client on one of ``shared``'s caches (behind a memory tier of its own) with the
    soaks' flight and retry settings. The first runs as ``limpet serve`` does (a handler
    runs on when its caller hangs up), the second cancels the handler of a caller who
    hangs up, as an app embedding ``create_app`` may. Stopping them closes their Clients."""
    fleet = Fleet()
    tiers = iter(range(len(shared.caches)))

    def client(**options: Any) -> Client:
        options.update(cache=shared.tiered(next(tiers)), flight=FLIGHT, retry=RETRY)
        fleet.clients.append(Client(**options))
        return fleet.clients[-1]

    monkeypatch.setattr(serve_app, "Client", client)
    async with contextlib.AsyncExitStack() as stack:
        for cancelling in (False, True):
            app = create_app(ServeConfig(upstreams=(gateway.base_url("a"),)))
            app.middlewares.append(fleet.tracked())
            # Its start-up hook starts its Client.
            serving = served(app, access_log=None, handler_cancellation=cancelling)
            fleet.urls.append(await stack.enter_async_context(serving) + "/v1")
        yield fleet


# -- the workload, from the seed ---------------------------------------------------------


@dataclass
class Plan:
    """One call as the seed drew it."""

    call: int  # its number in the run, sent as ``CALL_HEADER``
    wave: int
    tenant: int
    proxy: int  # 0 or 1
    prompt: int
    kind: Kind = "complete"
    stop: Stop = "none"
    gap: int = 0  # event-loop turns the launcher waits before starting it
    turns: int = 0  # for "cancel": turns from its start to its cancellation
    chunks: int = 0  # for "abandon": chunks read before closing the stream


def draw(seed: int) -> list[Wave[Plan]]:
    """The whole run, from the seed alone."""
    rng = random.Random(seed)
    calls = iter(range(1_000_000))
    waves = []
    for wave in range(WAVES):
        hot = rng.sample(range(REQUESTS), 2)
        # The chorus: every tenant asks one prompt at both proxies at once.
        plans = [
            Plan(next(calls), wave, tenant, proxy, hot[0], rng.choice(("complete", "stream")))
            for tenant in range(TENANTS)
            for proxy in (0, 1)
        ]
        for _ in range(CALLS_PER_WAVE):
            kind: Kind = "stream" if rng.random() < 0.5 else "complete"
            roll = rng.random()
            stop: Stop = "cancel" if roll < 0.2 else "none"
            if kind == "stream" and roll > 0.8:
                stop = "abandon"
            plans.append(
                Plan(
                    call=next(calls),
                    wave=wave,
                    tenant=rng.randrange(TENANTS),
                    proxy=rng.randrange(2),
                    prompt=rng.choice(hot) if rng.random() < 0.7 else rng.randrange(REQUESTS),
                    kind=kind,
                    stop=stop,
                    gap=rng.randrange(6),
                    turns=rng.randrange(CANCEL_TURNS) if stop == "cancel" else 0,
                    chunks=rng.randrange(1, 4) if stop == "abandon" else 0,
                )
            )
        faults = []
        if wave > 0 and rng.random() < 0.4:
            kinds = ("status", "drop", "drop_mid_stream", "stream_error")
            faults.append((rng.choice(kinds), rng.randrange(1, 4)))
        if wave > 0 and rng.random() < 0.5:  # an upstream that quotes the caller's key
            faults.append((f"echo:{rng.choice(ECHOES)}", rng.randrange(1, 3)))
        waves.append(Wave(plans, draw_kills(rng), faults, draw_outage(rng)))
    return waves


# -- running it --------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one call ended, as its tenant saw it."""

    plan: Plan
    faulty: bool  # its wave had upstream faults queued
    started: int = -1  # the run's tick when it started
    completion: ChatCompletion | None = None
    chunks: list[ChatCompletionChunk] = field(default_factory=list)
    whole: bool = False  # a JSON answer, or a stream read to its end
    error: Exception | None = None
    cancelled: bool = False  # it ended with CancelledError
    cancel_sent: bool = False  # task.cancel() returned True


@dataclass
class Run:
    gateway: TenantSpy
    shared: Shared
    fleet: Fleet
    ticks: Iterator[int]
    keys: list[str]  # each tenant's API key
    sdks: list[list[openai.AsyncOpenAI]] = field(default_factory=list)  # [tenant][proxy]
    received: dict[int, Received] = field(default_factory=dict)  # by call
    requests: list[dict[str, Any]] = field(default_factory=lambda: prompts()[:REQUESTS])
    outcomes: list[Outcome] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def tenants(self) -> AsyncIterator[None]:
        """Each tenant's ``openai.AsyncOpenAI`` at each proxy, over a tap."""
        async with contextlib.AsyncExitStack() as stack:
            for key in self.keys:
                sdks = []
                for url in self.fleet.urls:
                    http = openai.DefaultAsyncHttpxClient(transport=Tap(self.received))
                    sdk = openai.AsyncOpenAI(
                        base_url=url, api_key=key, max_retries=0, http_client=http
                    )
                    sdks.append(await stack.enter_async_context(sdk))
                self.sdks.append(sdks)
            yield

    def authorization(self, tenant: int) -> str:
        return f"Bearer {self.keys[tenant]}"

    async def call(self, outcome: Outcome) -> None:
        plan = outcome.plan
        sdk, request = self.sdks[plan.tenant][plan.proxy], self.requests[plan.prompt]
        headers = {CALL_HEADER: str(plan.call)}
        outcome.started = next(self.ticks)
        try:
            if plan.kind == "complete":
                outcome.completion = await sdk.chat.completions.create(
                    **request, extra_headers=headers
                )
                outcome.whole = True
                return
            stream = await sdk.chat.completions.create(
                **request, stream=True, extra_headers=headers
            )
            async with stream:  # closing it part-way hangs up mid-stream
                async for chunk in stream:
                    outcome.chunks.append(chunk)
                    if plan.stop == "abandon" and len(outcome.chunks) == plan.chunks:
                        return
            outcome.whole = True
        except asyncio.CancelledError:
            outcome.cancelled = True
            raise
        except Exception as exc:  # judged by check_outcome
            outcome.error = exc

    async def wave(self, wave: Wave[Plan]) -> None:
        self.shared.next_wave()
        endpoint = self.gateway.endpoint("a")
        for kind, times in wave.faults:
            if kind.startswith("echo:"):
                endpoint.echo_authorization(cast(EchoShape, kind.removeprefix("echo:")), times)
            else:
                queue_faults(endpoint, [(kind, times)])
        outcomes = [Outcome(plan, faulty=bool(wave.faults)) for plan in wave.plans]
        self.outcomes += outcomes
        launches = [
            Launch(o.plan.gap, self.call(o), o.plan.turns if o.plan.stop == "cancel" else None)
            for o in outcomes
        ]
        clients = (self.fleet.clients[0], self.fleet.clients[1])
        await play(self.shared, clients, launches, wave.kills, wave.outage)
        for outcome, launch in zip(outcomes, launches, strict=True):
            outcome.cancel_sent = launch.cancel_sent
        await self.fleet.idle()  # handlers of callers who hung up may run on
        endpoint.clear_faults()

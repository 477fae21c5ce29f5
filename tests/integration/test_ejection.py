"""Ejecting an endpoint and bringing it back, driven by real calls over loopback HTTP,
``complete()``'s and ``embed()``'s alike.

The router's clock is a ``FakeClock``: cool-downs pass when a test moves it, never by
sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from limpet import Client, EmbeddingBatchError, Endpoint, RetryConfig
from limpet.config import RoutingConfig
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway
from tests.fakes import FakeClock
from tests.integration.chat import ask
from tests.integration.scripted import completion
from tests.loopback import served

ONCE = RetryConfig(max_attempts=1)
EMBEDDER = "openai/text-embedding-3-small"
YEARS = 10**9  # seconds: a Retry-After of some 31 years


def router(gateway: FakeGateway, clock: FakeClock, **config: Any) -> StickyRouter:
    endpoints = [Endpoint(name, gateway.base_url(name)) for name in ("a", "b")]
    return StickyRouter(endpoints, config=RoutingConfig(**config), clock=clock)


class Breaking:
    """An upstream that answers a request naming ``held`` only once released, after it
    arrived, and every other with a 502: one call accepted before the endpoint broke."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def serve(self, request: web.Request) -> web.Response:
        self.calls += 1
        if "held" in await request.text():
            self.arrived.set()
            await self.release.wait()
            return web.json_response(completion())
        return web.json_response({"error": {"message": "broken", "code": 502}}, status=502)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.serve)
        async with served(app) as url:
            yield f"{url}/v1"


@asynccontextmanager
async def apart(
    clock: FakeClock, *, batch: int = 512, **config: Any
) -> AsyncIterator[tuple[StickyRouter, FakeGateway, FakeGateway]]:
    """A router over endpoints "a" and "b", each on a gateway of its own: a gateway's
    embedding requests are its endpoint's."""
    async with FakeGateway(endpoints=("a",)) as a, FakeGateway(endpoints=("b",)) as b:
        endpoints = [
            Endpoint("a", a.base_url("a"), embedding_batch_size=batch),
            Endpoint("b", b.base_url("b"), embedding_batch_size=batch),
        ]
        yield StickyRouter(endpoints, config=RoutingConfig(**config), clock=clock), a, b


def homed_on(r: StickyRouter, name: str, prefix: str = "q", count: int = 1) -> list[dict[str, Any]]:
    """``count`` requests whose first choice is endpoint ``name``."""
    found = (ask(f"{prefix}{i}") for i in range(1000))
    homed = [body for body in found if r.select(body).endpoints[0].name == name]
    return homed[:count]


async def test_a_retry_after_stretches_an_ejection_only_up_to_max_cooldown() -> None:
    # Regression (adversarial review): a 503's Retry-After became the ejection with no
    # bound, so a date in year 9999 took the endpoint away for the life of the process.
    clock = FakeClock()
    async with FakeGateway() as gateway:
        r = router(gateway, clock, failure_threshold=1, cooldown=10.0, max_cooldown=60.0)
        [body] = homed_on(r, "a")
        gateway.endpoint("a").fail(503, retry_after=YEARS)
        # No admission control: its own pause for the Retry-After (real time, up to
        # max_retry_after) would keep "a" away too; this is about the ejection alone.
        async with Client(router=r, cache=None, retry=ONCE, admission=False) as client:
            assert (await client.complete(**body)).endpoint == "b"  # failed over
            assert r.status()["a"].ejected_for == 60.0
            clock.advance(60.0)
            assert (await client.complete(**body, seed=1)).endpoint == "a"  # the probe
        assert r.status()["a"].state == "healthy"


async def test_a_spread_route_keeps_ejected_endpoints_as_its_last_resort() -> None:
    # Regression (adversarial review): with unmarked="spread" an ejected endpoint was left
    # out of the failover order, so when the others failed the call failed, untried on
    # an endpoint that would have answered (a keyed route tries it last).
    clock = FakeClock()
    async with FakeGateway() as gateway:
        r = router(gateway, clock, unmarked="spread", failure_threshold=1)
        async with Client(router=r, cache=None, retry=ONCE, admission=False) as client:
            gateway.endpoint("a").fail(502)
            for turn in range(4):  # spread takes turns: "a" is first within two calls
                if r.status()["a"].state != "healthy":
                    break
                await client.complete(**ask(f"q{turn}"))
            assert r.status()["a"].state == "ejected"
            gateway.endpoint("b").fail(502)  # "a" has recovered, still in its cool-down
            before = [gateway.endpoint(name).calls for name in ("a", "b")]
            answer = await client.complete(**ask("one more"))
        assert answer.endpoint == "a"
        after = [gateway.endpoint(name).calls for name in ("a", "b")]
        assert [n - m for n, m in zip(after, before, strict=True)] == [1, 1]  # "b", then "a"


async def test_a_success_begun_before_an_ejection_does_not_end_it() -> None:
    # Regression (adversarial review): any success brought an ejected endpoint back, so a
    # slow call the endpoint accepted before it broke ended the ejection when it answered,
    # with no cool-down and no probe, and the broken endpoint had traffic again.
    clock, upstream = FakeClock(), Breaking()
    async with FakeGateway(endpoints=("b",)) as gateway, upstream.running() as url:
        endpoints = [Endpoint("a", url), Endpoint("b", gateway.base_url("b"))]
        r = StickyRouter(endpoints, config=RoutingConfig(failure_threshold=1), clock=clock)
        [held] = homed_on(r, "a", prefix="held ")
        broken = homed_on(r, "a", count=2)
        async with Client(router=r, cache=None, retry=ONCE) as client:
            slow = asyncio.create_task(client.complete(**held))
            await upstream.arrived.wait()
            assert (await client.complete(**broken[0])).endpoint == "b"  # "a" failed: ejected
            assert r.status()["a"].state == "ejected"
            upstream.release.set()
            assert (await slow).endpoint == "a"
            assert r.status()["a"].state == "ejected"
            calls = upstream.calls
            assert (await client.complete(**broken[1])).endpoint == "b"
            assert upstream.calls == calls  # the broken endpoint was left alone


# --- embed() ----------------------------------------------------------------------------------


async def test_embed_leaves_an_ejected_endpoint_alone_until_its_probe() -> None:
    # Regression: embed() tried its endpoints in their given order whatever their health,
    # so with "a" ejected every embed request went to "a" first (and its retries).
    clock = FakeClock()
    async with apart(clock, failure_threshold=1, cooldown=30.0) as (r, a, b):
        a.endpoint("a").fail(502)  # once: "a" would answer the next request
        async with Client(router=r, cache=None, retry=ONCE) as client:
            for i in range(3):
                await client.embed(model=EMBEDDER, input=f"text {i}")
            assert (a.embeddings.calls, b.embeddings.calls) == (1, 3)  # failed over once
            assert r.status()["a"].state == "ejected"
            clock.advance(30.0)
            await client.embed(model=EMBEDDER, input="after the cool-down")  # the probe
        assert (a.embeddings.calls, b.embeddings.calls) == (2, 3)
        assert r.status()["a"].state == "healthy"


async def test_complete_and_embed_share_one_view_of_each_endpoints_health() -> None:
    clock = FakeClock()
    async with apart(clock, failure_threshold=2) as (r, a, b):
        [body] = homed_on(r, "a")
        a.endpoint("a").fail(502, times=2)
        async with Client(router=r, cache=None, retry=ONCE) as client:
            assert (await client.complete(**body)).endpoint == "b"  # "a"'s first failure
            await client.embed(model=EMBEDDER, input="one")  # its second: ejected
            assert r.status()["a"].state == "ejected"
            # "a" would answer now; neither kind of call is sent there in its cool-down.
            assert (await client.complete(**body, seed=1)).endpoint == "b"
            await client.embed(model=EMBEDDER, input="two")
        assert (a.endpoint("a").calls, a.embeddings.calls) == (1, 1)
        assert (b.endpoint("b").calls, b.embeddings.calls) == (2, 2)


async def test_one_embed_request_probes_an_ejected_endpoint_the_others_go_elsewhere() -> None:
    clock = FakeClock()
    async with apart(clock, batch=1, failure_threshold=1, cooldown=30.0) as (r, a, b):
        a.endpoint("a").fail(502)
        async with Client(router=r, cache=None, retry=ONCE) as client:
            await client.embed(model=EMBEDDER, input="ejects a")
            clock.advance(30.0)
            # Three requests of one input, routed together: the first is the probe.
            e = await client.embed(model=EMBEDDER, input=["p", "q", "r"])
        assert e.misses == 3
        assert (a.embeddings.calls, b.embeddings.calls) == (2, 3)
        assert r.status()["a"].state == "healthy"


async def test_an_embed_refused_or_cancelled_says_nothing_about_the_endpoint() -> None:
    clock = FakeClock()
    async with apart(clock, failure_threshold=1) as (r, a, b):
        a.endpoint("a").fail(400)
        async with Client(router=r, cache=None, retry=ONCE) as client:
            with pytest.raises(EmbeddingBatchError):
                await client.embed(model=EMBEDDER, input="refused")
            a.endpoint("a").hold_answers()
            # Bypass: nobody else could await its request, so it ends with its caller.
            call = asyncio.create_task(client.embed(model=EMBEDDER, input="x", cache="bypass"))
            await a.embeddings.wait_for_requests(2)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            a.endpoint("a").release_answers()
            status = r.status()["a"]
        assert (status.state, status.failures, status.in_flight) == ("healthy", 0, 0)
        assert b.embeddings.calls == 0  # neither failed over


async def test_an_embed_refusal_of_the_callers_own_key_leaves_the_endpoint_in() -> None:
    clock = FakeClock()
    async with apart(clock, failure_threshold=1) as (r, a, b):
        a.endpoint("a").fail(401)
        tenant = {"Authorization": "Bearer sk-tenant"}  # sent where the endpoint sends none
        async with Client(router=r, cache=None, retry=ONCE) as client:
            with pytest.raises(EmbeddingBatchError):
                await client.embed(model=EMBEDDER, input="refused", extra_headers=tenant)
            assert r.status()["a"].state == "healthy"  # that caller's key, not "a"'s
            await client.embed(model=EMBEDDER, input="another caller")
        assert (a.embeddings.calls, b.embeddings.calls) == (2, 0)

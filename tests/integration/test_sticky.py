"""Sticky routing end to end: the FakeGateway's provider caches over real loopback HTTP,
and the affinity map shared through a real Redis.

Two kinds of tests:

- Router-level (run now): ``routed`` below is the upstream loop the Client runs, written
  out (route, try endpoints in order, report each attempt), over a real ``Transport``.
- Client-level: the same behaviours through ``Client(router=StickyRouter(...))``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from limpet import (
    Client,
    Endpoint,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
    Timeouts,
)
from limpet.config import RoutingConfig
from limpet.errors import APIError, CacheUnavailableError
from limpet.http.retry import should_retry
from limpet.http.transport import Transport
from limpet.models import Usage
from limpet.providers.usage import parse_usage
from limpet.routing.affinity import RedisAffinityStore, affinity_scope, affinity_store_for
from limpet.routing.prefix import prefix_chain
from limpet.routing.sticky import StickyRouter, routing_key
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import ProviderPromptCache
from tests.fakes import FakeClock
from tests.redis_servers import free_port

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}
NAMES = ("a", "b", "c", "d")
SYSTEM = "You answer from the tenant's handbook, citing sections. " * 40
ONCE = RetryConfig(max_attempts=1)

pytestmark = pytest.mark.gateway(endpoints=NAMES, prompt_cache=ProviderPromptCache)


def text(value: str, mark: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": value}
    if mark:
        block["cache_control"] = CC
    return block


def rag(tenant: str, question: str) -> dict[str, Any]:
    handbook = f"Handbook of {tenant}. " + "Each section explains one procedure. " * 300
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [text(SYSTEM, mark=True)]},
            {"role": "user", "content": [text(handbook, mark=True), text(question)]},
        ],
        "temperature": 0,
        "max_tokens": 20,
    }


def chat(history: list[dict[str, Any]], question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM},
            *history,
            {"role": "user", "content": [text(question, mark=True)]},
        ],
        "temperature": 0,
        "max_tokens": 20,
    }


def endpoints(gateway: FakeGateway) -> list[Endpoint]:
    return [Endpoint(name, gateway.base_url(name)) for name in NAMES]


async def routed(
    router: StickyRouter, transport: Transport, body: dict[str, Any]
) -> tuple[str, Usage]:
    """One upstream call as the Client makes it: route, fail over on retryable errors."""
    route = await router.route(body)
    for index, endpoint in enumerate(route.endpoints):
        try:
            with route.attempt(endpoint) as attempt:
                answer = await transport.chat(endpoint, route.body)
                usage = parse_usage(answer.get("usage"))
                attempt.served(usage)
        except APIError as exc:
            if index + 1 == len(route.endpoints) or not should_retry(exc):
                raise
            continue
        return endpoint.name, usage
    raise AssertionError("unreachable")


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport(timeouts=Timeouts(), retry=ONCE)
    yield t
    await t.aclose()


# --- Router level, over HTTP -------------------------------------------------------------------


async def test_one_prefix_from_fresh_routers_lands_on_one_endpoint_and_reads_its_cache(
    gateway: FakeGateway, transport: Transport
) -> None:
    served = []
    for question in ("What is step one?", "What is step two?", "Who approves it?"):
        name, usage = await routed(StickyRouter(endpoints(gateway)), transport, rag("t1", question))
        served.append((name, usage.cached_tokens > 0))
    assert {name for name, _ in served} == {served[0][0]}
    assert [read for _, read in served] == [False, True, True]
    assert gateway.total_calls == 3


async def test_a_failing_endpoint_moves_its_keys_and_they_come_back(
    gateway: FakeGateway, transport: Transport
) -> None:
    clock = FakeClock(1_800_000_000.0)
    config = RoutingConfig(failure_threshold=2, cooldown=30.0)
    router = StickyRouter(endpoints(gateway), config=config, clock=clock)
    bodies = [rag(f"tenant {i}", "q") for i in range(40)]
    home = {i: (await routed(router, transport, b))[0] for i, b in enumerate(bodies)}
    victim = home[0]
    mine = [i for i in home if home[i] == victim]
    gateway.endpoint(victim).take_down()
    for i in mine[:2]:  # two failures in a row (each call fails over and succeeds)
        await routed(router, transport, bodies[i])
    calls = gateway.endpoint(victim).calls
    moved = {i: (await routed(router, transport, bodies[i]))[0] for i in mine}
    assert gateway.endpoint(victim).calls == calls  # ejected: not even tried
    assert victim not in moved.values()
    for i in home:
        if i not in mine:
            assert (await routed(router, transport, bodies[i]))[0] == home[i]
    gateway.endpoint(victim).bring_up()
    clock.now += 30.0
    back = {i: (await routed(router, transport, bodies[i]))[0] for i in mine}
    assert set(back.values()) == {victim}
    # The victim's cache outlived the 30 s cool-down: coming back is a read, not a write.
    _, usage = await routed(router, transport, bodies[mine[0]])
    assert usage.cached_tokens > 0


# --- The shared affinity store on a real Redis -------------------------------------------------


@pytest.fixture
async def redis_cache(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache.from_url(redis_url, prefix=redis_prefix)
    yield cache
    await cache.aclose()


@pytest.mark.redis
async def test_the_redis_store_keeps_links_with_a_ttl(redis_cache: RedisCache) -> None:
    store = RedisAffinityStore(redis_cache)
    await store.remember([("link-1", "a", 300.0), ("link-2", "b", 3600.0)])
    assert await store.lookup(["link-1", "link-2", "link-3"]) == ["a", "b", None]
    assert await store.lookup([]) == []
    ttl = await redis_cache.redis.pttl(redis_cache.redis_key("affinity:link-1"))
    assert 0 < ttl <= 300_000
    assert "RedisAffinityStore" in repr(store)


@pytest.mark.redis
async def test_the_store_is_found_on_the_redis_tier(redis_cache: RedisCache) -> None:
    found = affinity_store_for(TieredCache(MemoryCache(), redis_cache).tiers)
    assert isinstance(found, RedisAffinityStore)
    assert affinity_store_for(TieredCache(MemoryCache()).tiers) is None


async def test_a_dead_redis_is_a_cache_fault_and_routing_goes_on() -> None:
    dead = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0")
    store = RedisAffinityStore(dead)
    with pytest.raises(CacheUnavailableError):
        await store.lookup(["x"])
    router = StickyRouter([Endpoint("a", "http://x"), Endpoint("b", "http://y")], store=store)
    route = await router.route(rag("t", "q"))
    with route.attempt(route.endpoints[0]) as attempt:
        attempt.served()
    await router.aclose()
    assert router.stats.store_errors >= 1
    await dead.aclose()


@pytest.mark.redis
async def test_a_moved_prefix_is_followed_by_another_process_through_redis(
    gateway: FakeGateway, transport: Transport, redis_url: str, redis_prefix: str
) -> None:
    config = RoutingConfig(load_floor=1, max_overload=0.0)
    async with (
        RedisCache.from_url(redis_url, prefix=redis_prefix) as cache_a,
        RedisCache.from_url(redis_url, prefix=redis_prefix) as cache_b,
    ):
        a = StickyRouter(endpoints(gateway), config=config, store=RedisAffinityStore(cache_a))
        b = StickyRouter(endpoints(gateway), config=config, store=RedisAffinityStore(cache_b))
        body = rag("moved", "q1")
        home = a.select(body).endpoints[0].name
        neighbour = next(
            rag(f"neighbour {i}", "q")
            for i in range(100)
            if a.select(rag(f"neighbour {i}", "q")).endpoints[0].name == home
        )
        # Another call in flight at home makes bounded load (floor 1, e 0) move this one.
        busy = a.select(neighbour)
        with busy.attempt(busy.endpoints[0]):
            name, _ = await routed(a, transport, body)
        assert name != home
        await a.flush()
        followed, usage = await routed(b, transport, rag("moved", "q2"))
        assert followed == name
        assert usage.cached_tokens > 0
        await b.aclose()


# --- Through the Client (needs Client(router=...)) ---------------------------------------------


def sticky_client(
    gateway: FakeGateway, router: StickyRouter | None = None, **kwargs: Any
) -> Client:
    router = router or StickyRouter(endpoints(gateway))
    return Client(router=router, retry=ONCE, **kwargs)


def client_router(client: Client) -> StickyRouter:
    router = client.router
    assert isinstance(router, StickyRouter)
    return router


async def test_client_same_prefix_from_fresh_clients_lands_on_one_endpoint(
    gateway: FakeGateway,
) -> None:
    served = []
    for question in ("What is step one?", "What is step two?", "Who approves it?"):
        async with sticky_client(gateway) as client:
            c = await client.complete(**rag("t1", question))
            served.append((c.endpoint, c.usage.cached_tokens > 0))
    assert len({name for name, _ in served}) == 1
    assert [read for _, read in served] == [False, True, True]


async def test_client_rolling_chat_stays_on_one_endpoint_and_reads_its_history(
    gateway: FakeGateway,
) -> None:
    history: list[dict[str, Any]] = []
    seen, reads = set(), []
    async with sticky_client(gateway, cache=None) as client:
        for turn in range(5):
            question = f"Turn {turn}: and then? " + "Explain in detail. " * 100
            c = await client.complete(**chat(history, question))
            seen.add(c.endpoint)
            reads.append(c.usage.cached_tokens)
            history += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": c.content or ""},
            ]
    assert len(seen) == 1
    assert reads[0] == 0 and all(b > a for a, b in itertools.pairwise(reads[1:]))
    assert reads[1] > 1000


async def test_client_rag_spreads_by_document(gateway: FakeGateway) -> None:
    async with sticky_client(gateway, cache=None) as client:
        homes = {(await client.complete(**rag(f"tenant {i}", "q"))).endpoint for i in range(24)}
    assert len(homes) >= 3


async def test_client_failover_ejects_and_keys_return_after_the_cooldown(
    gateway: FakeGateway,
) -> None:
    clock = FakeClock(1_800_000_000.0)
    config = RoutingConfig(failure_threshold=2, cooldown=30.0)
    router = StickyRouter(endpoints(gateway), config=config, clock=clock)
    async with sticky_client(gateway, router, cache=None) as client:
        body = rag("failing", "q")
        home = (await client.complete(**body)).endpoint
        gateway.endpoint(home).take_down()
        others = {(await client.complete(**rag("failing", f"q{i}"))).endpoint for i in range(4)}
        assert home not in others and len(others) == 1
        assert router.status()[home].state == "ejected"
        calls = gateway.endpoint(home).calls
        await client.complete(**rag("failing", "once more"))
        assert gateway.endpoint(home).calls == calls
        gateway.endpoint(home).bring_up()
        clock.now += 30.0
        assert (await client.complete(**rag("failing", "back?"))).endpoint == home


async def test_client_a_single_error_fails_over_once_without_repinning(
    gateway: FakeGateway,
) -> None:
    async with sticky_client(gateway, cache=None) as client:
        home = (await client.complete(**rag("blip", "q0"))).endpoint
        gateway.endpoint(home).fail(502)
        moved = await client.complete(**rag("blip", "q1"))
        assert moved.endpoint != home
        assert (await client.complete(**rag("blip", "q2"))).endpoint == home
        assert client_router(client).stats.retried_elsewhere == 1


async def test_client_derives_prompt_cache_key_outside_the_cache_key(
    gateway: FakeGateway,
) -> None:
    body: dict[str, Any] = {
        "model": "openai/gpt-5-mini",
        "messages": [{"role": "user", "content": "Hello there"}],
        "temperature": 0,
    }
    keyed = StickyRouter(endpoints(gateway), config=RoutingConfig(prompt_cache_key=True))
    async with sticky_client(gateway, keyed) as a, sticky_client(gateway) as b:
        first = await a.complete(**body)
        second = await b.complete(**body)
    sent = [r for name in NAMES for r in gateway.endpoint(name).requests]
    assert sum("prompt_cache_key" in r for r in sent) == 1
    assert first.key == second.key


async def test_client_mirrors_affinity_to_its_redis_tier_and_others_follow(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def tiered() -> TieredCache:
        return TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))

    def anchor(body: dict[str, Any], client: Client) -> str:
        chain = prefix_chain(body)
        depth = routing_key(chain).depth
        assert depth is not None
        scope = affinity_scope(client._keying.namespace, client._keying.credential)
        return f"{redis_prefix}affinity:{scope}{chain.links[depth].hash}"

    for endpoint in gateway.endpoints.values():
        endpoint.latency = 0.05
    probe = StickyRouter(endpoints(gateway))
    first = rag("spilled", "q")
    home = probe.select(first).endpoints[0].name
    neighbour = next(
        rag(f"neighbour {i}", "q")
        for i in range(100)
        if probe.select(rag(f"neighbour {i}", "q")).endpoints[0].name == home
    )
    tight = StickyRouter(endpoints(gateway), config=RoutingConfig(load_floor=1, max_overload=0))
    async with sticky_client(gateway, tight, cache=tiered()) as a:
        assert client_router(a).store is not None
        # The neighbour is upstream at home when the spilled request is routed: bounded
        # load (floor 1, e 0) sends that one elsewhere.
        gateway.endpoint(home).hold_answers()
        neighbour_call = asyncio.ensure_future(a.complete(**neighbour))
        await gateway.endpoint(home).wait_for_calls(1)
        moved = await a.complete(**first)
        gateway.endpoint(home).release_answers()
        at_home = await neighbour_call
    assert at_home.endpoint == home != moved.endpoint
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        # Closing the Client flushed the router's writes: only the exception is there.
        assert await raw.get(anchor(first, a)) == moved.endpoint.encode()
        assert await raw.get(anchor(neighbour, a)) is None
        # Pin the neighbour elsewhere by hand: a fresh Client follows Redis, not the hash.
        elsewhere = next(name for name in NAMES if name != home)
        await raw.set(anchor(neighbour, a), elsewhere, px=60_000)
    finally:
        await raw.aclose()
    async with sticky_client(gateway, cache=tiered()) as b:
        assert (await b.complete(**{**first, "max_tokens": 5})).endpoint == moved.endpoint
        assert (await b.complete(**{**neighbour, "max_tokens": 5})).endpoint == elsewhere
    # Another tenant's Client (another namespace) sharing the Redis follows its own hash:
    # another's traffic never steers its calls (nor tells it, so, what the other sent).
    async with sticky_client(gateway, cache=tiered(), namespace="another tenant") as c:
        assert (await c.complete(**{**first, "max_tokens": 6})).endpoint == home
        assert (await c.complete(**{**neighbour, "max_tokens": 6})).endpoint == home


@pytest.mark.redis
async def test_a_burst_of_routing_decisions_shares_the_caches_read_batches(
    gateway: FakeGateway, redis_cache: RedisCache
) -> None:
    # 500 routing decisions at once, each looking its prefix up in the affinity map in
    # Redis: the lookups join the cache's read batches instead of taking a pooled
    # connection each (64 of them), so a healthy Redis is never taken for down.
    router = StickyRouter(endpoints(gateway), store=RedisAffinityStore(redis_cache))
    routes = await asyncio.gather(*(router.route(rag(f"document {i}", "q")) for i in range(500)))
    assert len(routes) == 500
    assert router.stats.store_errors == 0
    assert redis_cache.breaker.opens == 0 and redis_cache.breaker_state == "closed"
    assert 0 < redis_cache._reads.batches < 500
    await router.aclose()

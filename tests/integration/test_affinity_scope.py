"""Where bounded load moved a prefix steers only calls of the scope that sent it: a tenant
(``complete(tenant=...)``, ``limpet serve --client-keys-file``) or a caller sending its
own key. Another's call on the same prefix goes where the prefix hashes, as it would had
nothing been sent, so ``Completion.endpoint`` (serve: ``X-Limpet-Endpoint``) never tells
it what the other asked. Through one Client, across Clients sharing Redis, and through
the proxy. The FakeGateway over loopback, three endpoints; a spill is provoked by holding
a call in flight at the prefix's home, never by sleeping."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from limpet import Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.config import RoutingConfig
from limpet.routing.sticky import StickyRouter
from limpet.serve import ServeConfig, create_app
from limpet.serve.config import endpoints_of
from limpet.testing import FakeGateway
from tests.loopback import served

MODEL = "anthropic/claude-sonnet-4.6"
NAMES = ("a", "b", "c")
SECRET = "CONFIDENTIAL merger memo: Acme to acquire Globex for $4.2B. " * 20
# Bounded load with a floor of 1 and no slack: one call held at home spills the next.
TIGHT = RoutingConfig(load_floor=1, max_overload=0.0)
ONCE = RetryConfig(max_attempts=1)

pytestmark = pytest.mark.gateway(endpoints=NAMES)

#: How each pair of callers is told apart: tenants, or keys of their own.
CALLERS = {
    "tenants": ({"tenant": "A"}, {"tenant": "B"}),
    "own keys": (
        {"extra_headers": {"Authorization": "Bearer sk-caller-A"}},
        {"extra_headers": {"Authorization": "Bearer sk-caller-B"}},
    ),
}


def ask(system: str, question: str) -> dict[str, Any]:
    """A question on a system prompt marked for the provider's cache: routed by it."""
    block = {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
    return {
        "model": MODEL,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": [block]},
            {"role": "user", "content": question},
        ],
    }


def home_of(endpoints: list[Endpoint], body: dict[str, Any]) -> int:
    """The index of the endpoint ``body``'s prefix hashes to."""
    probe = StickyRouter(endpoints)
    return probe.endpoints.index(probe.select(body).endpoints[0])


def fillers(endpoints: list[Endpoint], home: int, count: int) -> list[dict[str, Any]]:
    """``count`` requests on prefixes of their own that hash to ``home`` too."""
    found = [ask(f"filler system {i}", "hello") for i in range(400)]
    return [body for body in found if home_of(endpoints, body) == home][:count]


def sticky_client(gateway: FakeGateway, **options: Any) -> Client:
    endpoints = [Endpoint(name, gateway.base_url(name), api_key="sk-app") for name in NAMES]
    return Client(router=StickyRouter(endpoints, config=TIGHT), retry=ONCE, **options)


async def spill(gateway: FakeGateway, client: Client, home: str, **caller: Any) -> str:
    """Send SECRET's first question as ``caller`` while another of its calls is held at
    ``home``: bounded load moves the prefix, and pins it there. Where it went."""
    endpoints = [Endpoint(name, gateway.base_url(name)) for name in NAMES]
    (filler,) = fillers(endpoints, NAMES.index(home), 1)
    at_home = gateway.endpoint(home)
    at_home.hold_answers()
    held = asyncio.ensure_future(client.complete(**filler, **caller))
    await at_home.wait_for_calls(at_home.calls + 1)
    moved = await client.complete(**ask(SECRET, "Is it final?"), **caller)
    at_home.release_answers()
    await held
    return moved.endpoint


@pytest.mark.parametrize("callers", CALLERS.values(), ids=CALLERS.keys())
async def test_one_callers_spill_neither_steers_nor_tells_another_in_one_client(
    gateway: FakeGateway, callers: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    a, b = callers
    endpoints = [Endpoint(name, gateway.base_url(name)) for name in NAMES]
    home = NAMES[home_of(endpoints, ask(SECRET, "?"))]
    async with sticky_client(gateway) as client:
        moved = await spill(gateway, client, home, **a)
        followed = await client.complete(**ask(SECRET, "When does it close?"), **a)
        others = await client.complete(**ask(SECRET, "What is Globex worth?"), **b)
        nobodys = await client.complete(**ask(SECRET, "Who signs it?"))
    assert moved != home
    # A's calls follow its prefix to where its provider cache now lives...
    assert followed.endpoint == moved
    # ...and B's, and the Client's own, go where the prefix hashes: A sent nothing to them.
    assert others.endpoint == home
    assert nobodys.endpoint == home


async def test_the_clients_own_calls_still_share_their_pins(gateway: FakeGateway) -> None:
    endpoints = [Endpoint(name, gateway.base_url(name)) for name in NAMES]
    home = NAMES[home_of(endpoints, ask(SECRET, "?"))]
    async with sticky_client(gateway) as client:
        moved = await spill(gateway, client, home)
        followed = await client.complete(**ask(SECRET, "When does it close?"))
        tenant = await client.complete(**ask(SECRET, "What is Globex worth?"), tenant="B")
    assert moved != home == tenant.endpoint
    assert followed.endpoint == moved


@pytest.mark.redis
async def test_a_tenants_pins_reach_its_calls_in_other_clients_through_redis_and_no_others(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def tiered() -> TieredCache:
        return TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))

    endpoints = [Endpoint(name, gateway.base_url(name)) for name in NAMES]
    home = NAMES[home_of(endpoints, ask(SECRET, "?"))]
    async with sticky_client(gateway, cache=tiered()) as first:
        moved = await spill(gateway, first, home, tenant="A")
    # Closing the Client sent its pins to Redis; another Client (another process) of
    # the same scope reads them there.
    async with sticky_client(gateway, cache=tiered()) as second:
        followed = await second.complete(**ask(SECRET, "When does it close?"), tenant="A")
        others = await second.complete(**ask(SECRET, "What is Globex worth?"), tenant="B")
        nobodys = await second.complete(**ask(SECRET, "Who signs it?"))
    assert moved != home
    assert followed.endpoint == moved
    assert others.endpoint == home == nobodys.endpoint


# --- limpet serve ----------------------------------------------------------------------------

#: Each proxy mode's config and its two callers' Authorization: client keys (each a tenant)
#: with the proxy's own upstream key, or each caller's own key forwarded upstream.
MODES = {
    "client keys": (
        {"upstream_key": "sk-up", "client_keys": frozenset({"ck-A", "ck-B"})},
        ("Bearer ck-A", "Bearer ck-B"),
    ),
    "forwarded keys": ({}, ("Bearer sk-caller-A", "Bearer sk-caller-B")),
}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
async def test_one_tenants_traffic_never_shows_in_anothers_x_limpet_endpoint(
    gateway: FakeGateway, mode: tuple[dict[str, Any], tuple[str, str]]
) -> None:
    options, (a, b) = mode
    upstreams = tuple(gateway.base_url(name) for name in NAMES)
    config = ServeConfig(upstreams=upstreams, **options)
    endpoints = endpoints_of(upstreams, config.upstream_key)
    home = home_of(endpoints, ask(SECRET, "?"))
    at_home, home_name = gateway.endpoint(NAMES[home]), endpoints[home].name
    # The proxy routes by the default bounds: a floor of 8 in flight at home spills.
    burst = fillers(endpoints, home, 8)
    assert len(burst) == 8

    async with served(create_app(config), access_log=None) as url, aiohttp.ClientSession() as s:

        async def post(body: dict[str, Any], authorization: str) -> str:
            async with s.post(
                url + "/v1/chat/completions", json=body, headers={"Authorization": authorization}
            ) as response:
                assert response.status == 200, await response.text()
                await response.read()
                return response.headers["X-Limpet-Endpoint"]

        # The first answer fetches the price listing, through admission to the first
        # upstream: fetched now, it never waits behind the calls held there below.
        await post(ask("Warm-up.", "Hello?"), b)
        at_home.hold_answers()
        held = [asyncio.ensure_future(post(body, a)) for body in burst]
        await at_home.wait_for_calls(at_home.calls + 8)
        moved = await post(ask(SECRET, "Is it final?"), a)
        at_home.release_answers()
        assert await asyncio.gather(*held) == [home_name] * 8
        followed = await post(ask(SECRET, "When does it close?"), a)
        others = await post(ask(SECRET, "What is Globex worth?"), b)
    assert moved != home_name
    assert followed == moved
    # B is told where the prefix hashes, as if A had never sent it.
    assert others == home_name

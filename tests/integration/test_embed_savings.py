"""What ``embed()`` saved: an input served from a cache tier, by another call's request or
by an identical input earlier in its call saved what its vector cost when it was fetched
(its share of its request's dollars, by estimated tokens); an unpriced model's saved
nothing known. FakeGateway over loopback, a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.observe.events import CallEvent
from limpet.pipeline.vectors import estimate_tokens
from limpet.testing import FakeGateway

MODEL = "openai/text-embedding-3-small"
PER_TOKEN = 0.02 / 1e6  # the fake gateway's price of MODEL
UNPRICED = "acme/unpriced-embed"


def make_client(gateway: FakeGateway, **kwargs: object) -> Client:
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], **kwargs)  # type: ignore[arg-type]


def texts(n: int, prefix: str = "chunk") -> list[str]:
    """Inputs of one size each (so of one share of their request's cost): 3 tokens to
    the fake gateway, 3 estimated."""
    return [f"{prefix} {i:03d}" for i in range(n)]


async def test_a_repeated_call_is_a_hit_that_saved_what_the_first_spent(
    gateway: FakeGateway,
) -> None:
    events: list[CallEvent] = []
    async with make_client(gateway, on_event=events.append) as client:
        first = await client.embed(model=MODEL, input=texts(10))
        again = await client.embed(model=MODEL, input=texts(10))
        stats = client.stats
    assert first.cost is not None and first.cost.usd == pytest.approx(10 * 3 * PER_TOKEN)
    assert first.cost.saved_usd == 0.0
    assert again.cache is CacheStatus.HIT and again.cost is not None
    assert again.cost.usd == 0.0 and again.cost.saved_usd == pytest.approx(first.cost.usd)
    assert stats.saved_usd == pytest.approx(first.cost.usd)
    assert stats.cost_usd == pytest.approx(first.cost.usd)
    assert events[-1].saved_usd == pytest.approx(first.cost.usd)


async def test_each_hit_saved_its_own_share_of_its_requests_cost_by_its_tokens(
    gateway: FakeGateway,
) -> None:
    short, long = "a", "a longer text of some forty characters.."
    async with make_client(gateway) as client:
        first = await client.embed(model=MODEL, input=[short, long])
        mixed = await client.embed(model=MODEL, input=[short, "new"])
    assert first.cost is not None and mixed.cost is not None
    share = estimate_tokens(short) / (estimate_tokens(short) + estimate_tokens(long))
    assert mixed.cost.saved_usd == pytest.approx(first.cost.usd * share)
    assert mixed.cost.usd > 0.0  # "new" went upstream, and is paid, not saved


async def test_a_duplicate_inside_a_call_saved_what_its_twin_cost(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        e = await client.embed(model=MODEL, input=["x", "x", "x"])
    assert (e.misses, e.coalesced) == (1, 2)
    assert e.cost is not None and e.cost.saved_usd == pytest.approx(2 * e.cost.usd)


async def test_an_input_coalesced_onto_another_calls_request_saved_its_cost(
    gateway: FakeGateway,
) -> None:
    async with make_client(gateway) as client:
        a, b = await asyncio.gather(
            client.embed(model=MODEL, input=texts(5)), client.embed(model=MODEL, input=texts(5))
        )
        saved = client.stats.saved_usd
    sender, follower = (a, b) if a.cache is CacheStatus.MISS else (b, a)
    assert follower.cache is CacheStatus.COALESCED and gateway.embeddings.inputs == 5
    assert sender.cost is not None and follower.cost is not None
    assert follower.cost.usd == 0.0
    assert follower.cost.saved_usd == pytest.approx(sender.cost.usd)
    assert saved == pytest.approx(sender.cost.usd)


async def test_an_unpriced_models_hit_saved_nothing_known_never_zero(
    gateway: FakeGateway,
) -> None:
    async with make_client(gateway) as client:
        first = await client.embed(model=UNPRICED, input=["a"])
        again = await client.embed(model=UNPRICED, input=["a", "a"])
        stats = client.stats
    assert first.cost is None
    assert again.cache is CacheStatus.HIT and again.cost is None
    assert stats.saved_usd == 0.0 and stats.unpriced == 2


@pytest.mark.redis
async def test_inputs_another_process_fetched_saved_their_cost_there(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    """Read from the shared tier, or followed under another process's lease: either
    way, what each input's vector cost where it was fetched is saved."""
    first, second = texts(40), texts(40)[20:] + texts(20, "other")
    gateway.endpoint("a").delay(0.2)  # the first request is slow: the other call follows it

    def client() -> Client:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return make_client(gateway, cache=TieredCache(MemoryCache(), rc))

    async with client() as one, client() as two:
        a, b = await asyncio.gather(
            one.embed(model=MODEL, input=first), two.embed(model=MODEL, input=second)
        )
        saved = one.stats.saved_usd + two.stats.saved_usd
    assert a.cost is not None and b.cost is not None
    assert a.cost.usd + b.cost.usd == pytest.approx(60 * 3 * PER_TOKEN)
    assert a.cost.saved_usd + b.cost.saved_usd == pytest.approx(20 * 3 * PER_TOKEN)
    assert saved == pytest.approx(20 * 3 * PER_TOKEN)
    async with client() as three:
        later = await three.embed(model=MODEL, input=first)
    assert later.cache is CacheStatus.HIT and later.cost is not None
    assert later.cost.saved_usd == pytest.approx(40 * 3 * PER_TOKEN)

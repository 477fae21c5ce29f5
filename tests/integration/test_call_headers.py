"""A call's own headers (``extra_headers``) and its key: one that can change the answer
keys it apart, as an Endpoint's does; tracing, correlation and attribution headers do
not, so they cost no hit and split no flight."""

from __future__ import annotations

import asyncio

from limpet import CacheStatus, Client, Endpoint
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector
from tests.integration.chat import ask

BETA = {"anthropic-beta": "context-1m-2025-08-07"}
EMBEDDER = "openai/text-embedding-3-small"


def make_client(gateway: FakeGateway) -> Client:
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"), api_key="sk-1")])


async def test_a_header_that_can_change_the_answer_is_never_served_another_calls(
    gateway: FakeGateway,
) -> None:
    # Regression: the beta call was served the plain call's answer from the cache.
    ep = gateway.endpoint("a")
    async with make_client(gateway) as client:
        plain = await client.complete(**ask())
        beta = await client.complete(**ask(), extra_headers=BETA)
        assert (
            ep.last_headers is not None
            and ep.last_headers["anthropic-beta"] == BETA["anthropic-beta"]
        )
        other = await client.complete(**ask(), extra_headers={"Anthropic-Beta": "other"})
        assert ep.last_headers["anthropic-beta"] == "other"
        again = await client.complete(
            **ask(), extra_headers={"ANTHROPIC-BETA": BETA["anthropic-beta"]}
        )
        streamed = [c async for c in client.stream(**ask(), extra_headers=BETA)]
    assert [plain.cache, beta.cache, other.cache] == [CacheStatus.MISS] * 3
    assert len({plain.key, beta.key, other.key}) == 3
    assert (again.cache, again.key) == (CacheStatus.HIT, beta.key)  # the name in any case
    assert streamed and ep.calls == 3  # a stream of the same call replays its entry


async def test_calls_with_other_headers_in_flight_at_once_are_each_sent(
    gateway: FakeGateway,
) -> None:
    # Regression: the beta call joined the plain call's flight, so upstream was sent the
    # plain call's headers only, and both were answered that.
    ep = gateway.endpoint("a")
    ep.hold_answers()
    async with make_client(gateway) as client:
        plain = asyncio.create_task(client.complete(**ask()))
        beta = asyncio.create_task(client.complete(**ask(), extra_headers=BETA))
        async with asyncio.timeout(10):  # a hang is the failure, not a wait
            await ep.wait_for_calls(2)
        ep.release_answers()
        answers = await asyncio.gather(plain, beta)
    assert [a.cache for a in answers] == [CacheStatus.MISS, CacheStatus.MISS]
    assert answers[0].key != answers[1].key and ep.calls == 2


async def test_tracing_and_attribution_headers_share_entries_and_flights(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    traced = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "X-Request-Id": "req-1",
        "X-Title": "Example",
    }
    ep.hold_answers()
    async with make_client(gateway) as client:
        first = asyncio.create_task(client.complete(**ask(), extra_headers=traced))
        async with asyncio.timeout(10):
            await ep.wait_for_calls(1)
        second = asyncio.create_task(
            client.complete(**ask(), extra_headers={**traced, "X-Request-Id": "req-2"})
        )
        ep.release_answers()
        answers = await asyncio.gather(first, second)
        assert ep.last_headers is not None and ep.last_headers["X-Request-Id"] == "req-1"
        later = await client.complete(**ask(), extra_headers={"traceparent": "00-other-01"})
        plain = await client.complete(**ask())
    assert answers[0].cache is CacheStatus.MISS
    assert answers[1].cache in (CacheStatus.COALESCED, CacheStatus.HIT)
    assert (later.cache, plain.cache) == (CacheStatus.HIT, CacheStatus.HIT)
    assert len({a.key for a in [*answers, later, plain]}) == 1 and ep.calls == 1


async def test_an_embedding_calls_own_header_enters_its_inputs_keys(gateway: FakeGateway) -> None:
    # Regression: embed() keyed a call's credential headers only, as complete() did.
    async with make_client(gateway) as client:
        plain = await client.embed(model=EMBEDDER, input=["a", "b"])
        other = await client.embed(
            model=EMBEDDER, input=["a", "b"], extra_headers={"X-Embedding-Variant": "v2"}
        )
        traced = await client.embed(
            model=EMBEDDER, input=["a", "b"], extra_headers={"X-Request-Id": "req-3"}
        )
    assert (plain.misses, other.misses, traced.hits) == (2, 2, 2)
    assert other.vectors == [fake_vector(EMBEDDER, t) for t in ["a", "b"]]
    assert gateway.embeddings.calls == 2

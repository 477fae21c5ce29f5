"""Client.embed over loopback: the FakeGateway's /embeddings, a real Redis.

Every test counts what reached the gateway (requests, inputs), never times.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limpet import (
    APITimeoutError,
    CacheStatus,
    Client,
    ClientClosedError,
    EmbeddingBatchError,
    Embeddings,
    Endpoint,
    InvalidRequestError,
    MemcachedCache,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.flight.embeddings import fetch_shared
from limpet.flight.shared import RedisFlight
from limpet.observe.events import CallEvent
from limpet.pipeline.policy import CacheMode
from limpet.pipeline.vectors import estimate_tokens
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector
from tests.integration.held_slot import held_slot

MODEL = "openai/text-embedding-3-small"
FAST_RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)


def make_client(gateway: FakeGateway, *, batch: int = 512, **kwargs: object) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"), embedding_batch_size=batch)
    return Client(endpoints=[endpoint], retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


def texts(n: int, prefix: str = "chunk") -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def sent_inputs(gateway: FakeGateway) -> list[str]:
    return [text for body in gateway.embeddings.requests for text in body["input"]]


async def test_only_the_ten_missing_of_a_hundred_go_upstream_in_one_request(
    gateway: FakeGateway,
) -> None:
    chunks = texts(100)
    async with make_client(gateway) as client:
        await client.embed(model=MODEL, input=chunks[:90])
        gateway.embeddings.reset()
        e = await client.embed(model=MODEL, input=chunks)
    assert gateway.embeddings.calls == 1
    assert sent_inputs(gateway) == chunks[90:]
    assert (e.hits, e.misses, e.coalesced) == (90, 10, 0)
    assert e.vectors == [fake_vector(MODEL, text) for text in chunks]
    assert e.usage.prompt_tokens == 10 * 2  # "chunk NN": 8 characters, 2 tokens
    assert e.cost is not None and e.cost.usd == pytest.approx(20 * 0.02 / 1e6)  # $0.02/M
    assert client.stats.embedding_hits == 90 and client.stats.embedding_misses == 100


async def test_a_duplicate_inside_a_batch_is_sent_once(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        e = await client.embed(model=MODEL, input=["x", "y", "x"])
    assert sent_inputs(gateway) == ["x", "y"]
    assert len(e.vectors) == 3 and e.vectors[0] == e.vectors[2] != e.vectors[1]
    assert (e.hits, e.misses, e.coalesced) == (0, 2, 1)
    assert e.cache is CacheStatus.MISS


async def test_a_single_string_is_one_input(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        e = await client.embed(model=MODEL, input="hello")
        again = await client.embed(model=MODEL, input=["hello"])
    assert e.vectors == again.vectors == [fake_vector(MODEL, "hello")]
    assert again.cache is CacheStatus.HIT and gateway.embeddings.inputs == 1


async def test_a_str_subclass_is_embedded_and_cached_as_its_text(gateway: FakeGateway) -> None:
    class Doc(enum.StrEnum):
        HELLO = "hello"

    async with make_client(gateway) as client:
        e = await client.embed(model=MODEL, input=Doc.HELLO)
        again = await client.embed(model=MODEL, input=["hello"])
    assert e.vectors == again.vectors == [fake_vector(MODEL, "hello")]
    assert again.cache is CacheStatus.HIT and gateway.embeddings.inputs == 1


async def test_two_concurrent_overlapping_batches_send_every_distinct_input_once(
    gateway: FakeGateway,
) -> None:
    first, second = texts(60), texts(60)[30:] + texts(30, "other")
    async with make_client(gateway) as client:
        a, b = await asyncio.gather(
            client.embed(model=MODEL, input=first), client.embed(model=MODEL, input=second)
        )
    sent = sent_inputs(gateway)
    assert sorted(sent) == sorted(set(first) | set(second))
    assert a.vectors == [fake_vector(MODEL, t) for t in first]
    assert b.vectors == [fake_vector(MODEL, t) for t in second]
    assert a.misses + b.misses == 90 and a.coalesced + b.coalesced == 30


async def test_other_dimensions_are_other_entries(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        four = await client.embed(model=MODEL, input=["a"], dimensions=4)
        eight = await client.embed(model=MODEL, input=["a"], dimensions=8)
        again = await client.embed(model=MODEL, input=["a"], dimensions=4)
    assert (len(four.vectors[0]), len(eight.vectors[0])) == (4, 8)
    assert gateway.embeddings.inputs == 2 and again.cache is CacheStatus.HIT
    assert [body["dimensions"] for body in gateway.embeddings.requests] == [4, 8]


async def test_the_encoding_is_not_part_of_the_key_and_floats_are_decoded(
    gateway: FakeGateway,
) -> None:
    gateway.embeddings.supports_base64 = False  # an endpoint that answers floats anyway
    async with make_client(gateway) as client:
        floats = await client.embed(model=MODEL, input=["a"], encoding_format="float")
        default = await client.embed(model=MODEL, input=["a"])
    assert floats.vectors == default.vectors == [fake_vector(MODEL, "a")]
    assert default.cache is CacheStatus.HIT
    assert gateway.embeddings.requests[0]["encoding_format"] == "float"


async def test_base64_is_the_default_on_the_wire(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        e = await client.embed(model=MODEL, input=["a"])
    assert gateway.embeddings.requests[0]["encoding_format"] == "base64"
    assert isinstance(e.raw_responses[0]["data"][0]["embedding"], str)
    assert e.vectors == [fake_vector(MODEL, "a")]


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), batch=st.sampled_from([7, 100, 512]))
async def test_five_thousand_inputs_split_into_batches_land_in_their_places(
    gateway: FakeGateway, seed: int, batch: int
) -> None:
    gateway.embeddings.reset()
    gateway.embeddings.shuffle = True
    gateway.embeddings.rng.seed(seed)
    gateway.embeddings.max_batch = batch
    chunks = texts(5000, f"s{seed}")
    async with make_client(gateway, batch=batch, cache=None) as client:
        e = await client.embed(model=MODEL, input=chunks, dimensions=3)
    assert e.vectors == [fake_vector(MODEL, t, 3) for t in chunks]
    sizes = [len(body["input"]) for body in gateway.embeddings.requests]
    assert max(sizes) <= batch and sum(sizes) == 5000
    assert len(sizes) == -(-5000 // batch)


@pytest.mark.gateway(endpoints=("a", "b"))
async def test_a_request_fits_the_endpoint_it_fails_over_to(gateway: FakeGateway) -> None:
    """The first endpoint takes 512 inputs a request, its backup 4 (and refuses more):
    a request that fails over to the backup must fit it, or the call fails where it could
    have been served."""
    gateway.embeddings.max_batch = 4
    gateway.endpoint("a").fail(503, times=100)
    endpoints = [
        Endpoint("a", gateway.base_url("a"), embedding_batch_size=512),
        Endpoint("b", gateway.base_url("b"), embedding_batch_size=4),
    ]
    chunks = texts(10)
    async with Client(endpoints=endpoints, retry=RetryConfig(max_attempts=1)) as client:
        e = await client.embed(model=MODEL, input=chunks)
    assert e.vectors == [fake_vector(MODEL, text) for text in chunks]
    # Three requests of at most four inputs, each refused by "a" and answered by "b".
    assert sorted(len(body["input"]) for body in gateway.embeddings.requests) == [2, 2, 4, 4, 4, 4]


async def test_a_failed_sub_batch_fails_the_call_and_the_rest_is_cached(
    gateway: FakeGateway,
) -> None:
    chunks = texts(30)
    gateway.endpoint("a").fail(400)  # whichever of the three requests comes first
    async with make_client(gateway, batch=10) as client:
        with pytest.raises(EmbeddingBatchError) as caught:
            await client.embed(model=MODEL, input=chunks)
        error = caught.value
        assert len(error.failed) == 10 and "10 of 30" in str(error)
        for position, vector in enumerate(error.vectors):
            expected = None if position in error.failed else fake_vector(MODEL, chunks[position])
            assert vector == expected
        gateway.embeddings.reset()
        e = await client.embed(model=MODEL, input=chunks)
    assert sorted(sent_inputs(gateway)) == sorted(chunks[i] for i in error.failed)
    assert (e.hits, e.misses) == (20, 10)
    assert client.stats.errors == 1


async def test_a_partly_failed_call_counts_what_its_answered_requests_cost(
    gateway: FakeGateway,
) -> None:
    """Thirty inputs in three requests, one answered 400: the twenty answered were paid
    for, so the error, the stats and the event carry their tokens and dollars. A miss is
    an input sent upstream by its call: the ten of the failed request are misses of the
    failed call, and again of the call that sends them once more."""
    chunks = texts(30)
    events: list[CallEvent] = []
    gateway.endpoint("a").fail(400)  # whichever of the three requests comes first
    async with make_client(gateway, batch=10, on_event=events.append) as client:
        stats = client.stats
        with pytest.raises(EmbeddingBatchError) as caught:
            await client.embed(model=MODEL, input=chunks)
        error, event = caught.value, events[-1]
        assert error.usage.prompt_tokens == 20 * 2  # "chunk NN": 2 tokens
        assert error.cost is not None and error.cost.usd == pytest.approx(40 * 0.02 / 1e6)
        assert stats.prompt_tokens == 40 and stats.cost_usd == pytest.approx(error.cost.usd)
        assert event.error == "EmbeddingBatchError" and event.usage == error.usage
        assert event.cost_usd == error.cost.usd and event.priced
        assert stats.embedding_misses == 30 and stats.errors == 1
        await client.embed(model=MODEL, input=chunks)
    assert stats.prompt_tokens == 2 * gateway.embeddings.inputs == 60  # each answer once
    assert stats.cost_usd == pytest.approx(60 * 0.02 / 1e6)
    assert stats.embedding_misses == len(sent_inputs(gateway)) == 40
    assert stats.embedding_requests == gateway.embeddings.calls == 4


async def test_hits_misses_and_repeats_of_both_each_land_at_their_own_positions(
    gateway: FakeGateway,
) -> None:
    """Cached and new inputs interleaved, each repeated, sent in batches of two answered
    out of order, one batch failing: every position gets its own input's vector, or is
    named failed with every repeat of its input."""
    gateway.embeddings.shuffle = True
    gateway.embeddings.rng.seed(7)
    async with make_client(gateway, batch=2) as client:
        await client.embed(model=MODEL, input=["h1", "h2"])
        gateway.embeddings.reset()
        given = ["m1", "h1", "m2", "m1", "h2", "m3", "h1", "m4", "m3", "m2"]
        e = await client.embed(model=MODEL, input=given)
        assert e.vectors == [fake_vector(MODEL, text) for text in given]
        assert (e.hits, e.misses, e.coalesced) == (3, 4, 3)
        assert sorted(sent_inputs(gateway)) == ["m1", "m2", "m3", "m4"]
        gateway.embeddings.reset()
        gateway.endpoint("a").fail(400)  # the first of the three requests
        again = ["n1", "m1", "n2", "n3", "n1", "n4", "n5", "n3"]
        with pytest.raises(EmbeddingBatchError) as caught:
            await client.embed(model=MODEL, input=again)
    error = caught.value
    failed_texts = {again[i] for i in error.failed}
    assert failed_texts in ({"n1", "n2"}, {"n3", "n4"}, {"n5"})  # one whole batch
    assert error.failed == tuple(i for i, text in enumerate(again) if text in failed_texts)
    for position, vector in enumerate(error.vectors):
        if position not in error.failed:
            assert vector == fake_vector(MODEL, again[position])


async def test_a_response_missing_an_index_is_an_error_not_a_wrong_vector(
    gateway: FakeGateway,
) -> None:
    gateway.endpoint("a").wrong_shape()
    async with make_client(gateway) as client:
        with pytest.raises(EmbeddingBatchError, match="lacks 1 of 3"):
            await client.embed(model=MODEL, input=["a", "b", "c"])
        e = await client.embed(model=MODEL, input=["a", "b", "c"])
    assert e.misses == 3  # nothing of the bad answer was stored


async def test_vectors_of_other_dimensions_than_asked_are_an_error_never_stored(
    gateway: FakeGateway,
) -> None:
    """Refused, never stored; but each refused answer was paid for: its tokens and
    dollars are in the error and in the stats, as an answered request's are."""
    gateway.embeddings.supports_dimensions = False  # the model ignores `dimensions`
    async with make_client(gateway) as client:
        for attempt in range(1, 3):
            with pytest.raises(EmbeddingBatchError, match=r"16 components, expected 8") as caught:
                await client.embed(model=MODEL, input=["a", "b"], dimensions=8)
            error = caught.value
            assert error.usage.prompt_tokens == 2  # one token an input
            assert error.cost is not None and error.cost.usd == pytest.approx(2 * 0.02 / 1e6)
            assert client.stats.prompt_tokens == 2 * attempt
            assert client.stats.cost_usd == pytest.approx(attempt * error.cost.usd)
        gateway.embeddings.supports_dimensions = True
        e = await client.embed(model=MODEL, input=["a", "b"], dimensions=8)
    assert e.misses == 2 and e.vectors[0] == fake_vector(MODEL, "a", 8)
    assert gateway.embeddings.calls == 3  # nothing of the wrong answers was stored


async def test_token_arrays_are_embedded_and_cached_each_apart_from_any_text(
    gateway: FakeGateway,
) -> None:
    """Inputs as token arrays, as OpenAI takes them (LangChain's ``OpenAIEmbeddings``
    sends them by default): sent as they are, each cached per array, never taken for a
    text (nor a text for them)."""
    arrays = [[9906, 1917], [15339], [9906, 1917]]
    async with make_client(gateway) as client:
        first = await client.embed(model=MODEL, input=arrays)
        assert first.vectors == [fake_vector(MODEL, array) for array in arrays]
        assert (first.misses, first.coalesced) == (2, 1)  # the repeated array sent once
        assert gateway.embeddings.requests[-1]["input"] == [[9906, 1917], [15339]]
        again = await client.embed(model=MODEL, input=[15339])  # one array, unwrapped
        assert again.hits == 1 and again.vectors == [fake_vector(MODEL, [15339])]
        text = await client.embed(model=MODEL, input="15339")  # no array's vector
        assert text.misses == 1 and text.vectors == [fake_vector(MODEL, "15339")]
        with pytest.raises(InvalidRequestError, match=r"input\[1\]"):
            await client.embed(model=MODEL, input=[[1, 2], "mixed"])  # type: ignore[arg-type]
    assert len(gateway.embeddings.requests) == 2


async def test_dimensions_an_endpoint_sends_are_checked_as_a_calls_are(
    gateway: FakeGateway,
) -> None:
    """``dimensions`` in an endpoint's ``extra_body`` is sent with every request and
    keyed: an answer of another length is refused, never cached as that length."""
    gateway.embeddings.supports_dimensions = False  # the model ignores `dimensions`
    endpoint = Endpoint("a", gateway.base_url("a"), extra_body={"dimensions": 8})
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as client:
        with pytest.raises(EmbeddingBatchError, match=r"16 components, expected 8"):
            await client.embed(model=MODEL, input=["a"])
        gateway.embeddings.supports_dimensions = True
        e = await client.embed(model=MODEL, input=["a"])
    assert e.misses == 1 and e.vectors == [fake_vector(MODEL, "a", 8)]


async def test_a_call_that_clears_an_endpoints_dimensions_gets_the_models_own(
    gateway: FakeGateway,
) -> None:
    """A call's ``extra_body={"dimensions": None}`` clears the endpoint's ``dimensions``
    on the wire (the call's fields win): the model answers its own length, which is what
    was asked. It was refused as malformed (checked against the endpoint's 8), though
    paid for."""
    endpoint = Endpoint("a", gateway.base_url("a"), extra_body={"dimensions": 8})
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as client:
        e = await client.embed(model=MODEL, input=["a"], extra_body={"dimensions": None})
        again = await client.embed(model=MODEL, input=["a"], extra_body={"dimensions": None})
    assert gateway.embeddings.requests[0]["dimensions"] is None
    assert e.vectors == again.vectors == [fake_vector(MODEL, "a")]
    assert (e.misses, again.hits) == (1, 1)


@pytest.mark.gateway(endpoints=("a", "b"))
async def test_requests_are_sized_by_an_estimated_token_budget(gateway: FakeGateway) -> None:
    """Long inputs go in requests of about ``embedding_batch_tokens`` at most (the least of
    the endpoints'), as well as of ``embedding_batch_size`` inputs: a provider refuses a
    request over its token limit whole (OpenAI: 300,000)."""
    long = [f"{i} " + "word " * 480 for i in range(600)]  # ~600 tokens each, estimated
    endpoints = [
        Endpoint("a", gateway.base_url("a"), embedding_batch_tokens=300_000),
        Endpoint("b", gateway.base_url("b")),  # the default budget: 200,000
    ]
    async with Client(endpoints=endpoints, retry=FAST_RETRY) as client:
        e = await client.embed(model=MODEL, input=long)
    assert e.misses == 600
    sizes = sorted(len(body["input"]) for body in gateway.embeddings.requests)
    assert sum(sizes) == 600 and len(sizes) == 2
    for body in gateway.embeddings.requests:
        assert sum(estimate_tokens(text) for text in body["input"]) <= 200_000
    # No budget: the size alone.
    gateway.embeddings.reset()
    unbounded = Endpoint("a", gateway.base_url("a"), embedding_batch_tokens=None)
    async with Client(endpoints=[unbounded], retry=FAST_RETRY) as client:
        await client.embed(model=MODEL, input=long, cache="bypass")
    assert sorted(len(body["input"]) for body in gateway.embeddings.requests) == [88, 512]


async def test_a_waiter_is_not_failed_by_another_calls_refused_request(
    gateway: FakeGateway,
) -> None:
    """A request is refused whole for one of its inputs (one too long for the model, say):
    a call awaiting another input of it must not fail for that. It sends that input again
    in a request of its own; the call whose request it was fails as it did."""
    gateway.endpoint("a").fail(400)  # one of the two requests is refused
    async with make_client(gateway) as client:
        first, second = await asyncio.gather(
            client.embed(model=MODEL, input=["a", "b"]),
            client.embed(model=MODEL, input=["b", "c"]),
            return_exceptions=True,
        )
        if isinstance(first, EmbeddingBatchError):  # "a" and "b" refused: "b" sent again
            assert first.failed == (0, 1)
            assert isinstance(second, Embeddings) and second.misses == 2
            assert second.vectors == [fake_vector(MODEL, t) for t in ("b", "c")]
            assert sorted(sent_inputs(gateway)) == ["a", "b", "b", "c"]
        else:  # "c" refused: its own request's, the second call's error
            assert isinstance(first, Embeddings) and first.misses == 2
            assert isinstance(second, EmbeddingBatchError) and second.failed == (1,)
            assert sorted(sent_inputs(gateway)) == ["a", "b", "c"]  # "b" once, awaited
        assert (await client.embed(model=MODEL, input=["b"])).hits == 1  # stored


async def test_the_calls_awaiting_a_refused_input_send_it_again_once(
    gateway: FakeGateway,
) -> None:
    """Three calls await "x" in another call's request, which is refused: one of them
    sends it again, the other two await that one; it goes upstream twice in all."""
    gateway.endpoint("a").fail(400, after=0.3)  # the first request, once the others wait
    async with make_client(gateway) as client:
        refused = asyncio.ensure_future(client.embed(model=MODEL, input=["x", "too long"]))
        await gateway.embeddings.wait_for_requests(1)
        waiting = [asyncio.ensure_future(client.embed(model=MODEL, input=["x"])) for _ in range(3)]
        answers = await asyncio.gather(*waiting)
        with pytest.raises(EmbeddingBatchError):
            await refused
    assert all(e.vectors == [fake_vector(MODEL, "x")] for e in answers)
    assert sorted((e.misses, e.coalesced) for e in answers) == [(0, 1), (0, 1), (1, 0)]
    assert sent_inputs(gateway) == ["x", "too long", "x"]


async def test_calls_that_awaited_a_resend_refused_again_send_their_input_once(
    gateway: FakeGateway,
) -> None:
    """X's request of "bad" and "a" is refused; Y, which asked for both, sends them again
    and is refused again (its own "bad"); Z1 and Z2, which asked for "a" alone and
    awaited Y's resend, must not fail for Y's input: one of them sends "a", the other
    awaits it."""
    gateway.endpoint("a").fail(400, times=2, after=0.3)
    async with make_client(gateway) as client:
        x = asyncio.ensure_future(client.embed(model=MODEL, input=["bad", "a"]))
        await gateway.embeddings.wait_for_requests(1)
        y = asyncio.ensure_future(client.embed(model=MODEL, input=["bad", "a"]))
        zs = [asyncio.ensure_future(client.embed(model=MODEL, input=["a"])) for _ in range(2)]
        results = await asyncio.gather(x, y, *zs, return_exceptions=True)
    assert isinstance(results[0], EmbeddingBatchError)
    assert isinstance(results[1], EmbeddingBatchError) and results[1].failed == (0, 1)
    z1, z2 = results[2:]
    assert isinstance(z1, Embeddings) and isinstance(z2, Embeddings)
    assert z1.vectors == z2.vectors == [fake_vector(MODEL, "a")]
    assert sorted((z.misses, z.coalesced) for z in (z1, z2)) == [(0, 1), (1, 0)]
    assert [body["input"] for body in gateway.embeddings.requests] == [
        ["bad", "a"],
        ["bad", "a"],
        ["a"],
    ]


async def test_an_input_another_call_sent_again_and_stored_is_not_sent_a_third_time(
    gateway: FakeGateway,
) -> None:
    """Z and W await "a" in X's request, which is refused; Z sends "a" again at once and
    stores it, while W still awaits "b" in V's slow request. When W comes to "a", it is
    in the cache: a hit, not one more request."""
    gateway.endpoint("a").fail(400, after=0.3)  # X's request
    gateway.endpoint("a").delay(1.0)  # V's request
    async with make_client(gateway) as client:
        x = asyncio.ensure_future(client.embed(model=MODEL, input=["bad", "a"]))
        await gateway.embeddings.wait_for_requests(1)
        v = asyncio.ensure_future(client.embed(model=MODEL, input=["b"]))
        await gateway.embeddings.wait_for_requests(2)
        z = asyncio.ensure_future(client.embed(model=MODEL, input=["a"]))
        w = asyncio.ensure_future(client.embed(model=MODEL, input=["a", "b"]))
        results = await asyncio.gather(x, v, z, w, return_exceptions=True)
    assert isinstance(results[0], EmbeddingBatchError)
    w_result = results[3]
    assert isinstance(w_result, Embeddings)
    assert w_result.vectors == [fake_vector(MODEL, t) for t in ("a", "b")]
    assert (w_result.hits, w_result.misses, w_result.coalesced) == (1, 0, 1)
    assert [body["input"] for body in gateway.embeddings.requests] == [["bad", "a"], ["b"], ["a"]]


async def test_identical_calls_refused_for_their_own_input_send_it_a_bounded_number_of_times(
    gateway: FakeGateway,
) -> None:
    """Five calls of "bad" and "a" awaiting a sixth's refused request: the refusal is
    their own input's too. One sends them again, one more time after that, and the
    others await those: never a request per call."""
    gateway.endpoint("a").fail(400, times=10, after=0.2)
    async with make_client(gateway) as client:
        first = asyncio.ensure_future(client.embed(model=MODEL, input=["bad", "a"]))
        await gateway.embeddings.wait_for_requests(1)
        others = [client.embed(model=MODEL, input=["bad", "a"]) for _ in range(5)]
        results = await asyncio.gather(first, *others, return_exceptions=True)
    assert all(isinstance(r, EmbeddingBatchError) and r.failed == (0, 1) for r in results)
    assert gateway.embeddings.calls == 3


@pytest.mark.redis
async def test_a_follower_is_not_failed_by_another_processs_refused_request(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    """Across processes, the same: another process's request for "x" and an input too
    long is refused (its signed notice says so); this process sends "x" itself."""

    def client() -> Client:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return make_client(gateway, cache=TieredCache(MemoryCache(), rc, hmac_key=b"k" * 32))

    gateway.endpoint("a").fail(400, after=0.5)  # refused, once the other process follows
    async with client() as one, client() as two:
        leading = asyncio.ensure_future(one.embed(model=MODEL, input=["x", "too long"]))
        await gateway.embeddings.wait_for_requests(1)
        following = await two.embed(model=MODEL, input=["x"])
        with pytest.raises(EmbeddingBatchError) as refused:
            await leading
    assert refused.value.failed == (0, 1)
    assert following.vectors == [fake_vector(MODEL, "x")] and following.misses == 1
    assert sent_inputs(gateway) == ["x", "too long", "x"]


@pytest.mark.parametrize(
    ("given_input", "field"),
    [([], "input"), (["a", ""], "input[1]"), (["a", 3], "input[1]"), (None, "input")],
)
async def test_bad_input_fails_before_the_network(
    gateway: FakeGateway, given_input: object, field: str
) -> None:
    async with make_client(gateway) as client:
        with pytest.raises(InvalidRequestError) as caught:
            await client.embed(model=MODEL, input=given_input)  # type: ignore[arg-type]
    assert caught.value.field == field and gateway.embeddings.calls == 0


@pytest.mark.parametrize("dimensions", [-3, 0, "8", 2.0, True])
async def test_dimensions_through_extra_body_are_checked_before_the_network(
    gateway: FakeGateway, dimensions: object
) -> None:
    """``extra_body={"dimensions": ...}`` is keyed and sent as the argument is: it is
    checked by the argument's rule, before anything is sent."""
    async with make_client(gateway) as client:
        with pytest.raises(InvalidRequestError) as caught:
            await client.embed(model=MODEL, input=["a"], extra_body={"dimensions": dimensions})
        e = await client.embed(model=MODEL, input=["a"], extra_body={"dimensions": 8})
    assert caught.value.field == "dimensions" and gateway.embeddings.calls == 1
    assert e.vectors == [fake_vector(MODEL, "a", 8)]


async def test_a_batch_over_the_maximum_is_refused(gateway: FakeGateway) -> None:
    async with make_client(gateway, max_embed_inputs=3) as client:
        with pytest.raises(InvalidRequestError, match=r"input\[3\]"):
            await client.embed(model=MODEL, input=texts(4))
    assert gateway.embeddings.calls == 0


async def test_bypass_neither_reads_nor_writes_and_refresh_writes(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        await client.embed(model=MODEL, input=["a"], cache="bypass")
        refreshed = await client.embed(model=MODEL, input=["a"], cache="refresh")
        hit = await client.embed(model=MODEL, input=["a"])
    assert gateway.embeddings.inputs == 2
    assert refreshed.cache is CacheStatus.MISS and hit.cache is CacheStatus.HIT


async def test_an_embedding_entry_is_never_a_completion(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        await client.embed(model=MODEL, input=["hi"])
        c = await client.complete(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=0
        )
    assert c.cache is CacheStatus.MISS and client.stats.cache.corrupt == 0


async def test_events_and_invalidation_cover_embeddings(gateway: FakeGateway) -> None:
    events: list[CallEvent] = []
    async with make_client(gateway, on_event=events.append) as client:
        await client.embed(model=MODEL, input=["a", "b"])
        await client.embed(model=MODEL, input=["a", "b", "c"])
        await client.invalidate(MODEL)
        again = await client.embed(model=MODEL, input=["a"])
    assert [e.inputs for e in events] == [(0, 2, 0), (2, 1, 0), (0, 1, 0)]
    assert [e.cache for e in events] == [CacheStatus.MISS] * 3
    assert again.misses == 1 and client.stats.hits == 0


async def test_an_embedding_call_of_unknown_cost_is_unpriced_in_its_event_and_the_stats(
    gateway: FakeGateway,
) -> None:
    """``stats.cost_usd`` leaves out what is unknown, so it is a lower bound while
    ``stats.unpriced`` > 0: an ``embed()`` call of unknown cost must count there, whether
    it returned or raised."""
    events: list[CallEvent] = []
    async with make_client(gateway, batch=2, on_event=events.append) as client:
        unknown = await client.embed(model="acme/unpriced-embed", input=["a"])
        assert client.stats.unpriced == 1
        known = await client.embed(model=MODEL, input=["a"])
        assert client.stats.unpriced == 1
        gateway.endpoint("a").fail(400)  # one of two requests is refused
        with pytest.raises(EmbeddingBatchError) as caught:
            await client.embed(model="acme/unpriced-embed", input=texts(4))
        assert caught.value.cost is None and client.stats.unpriced == 2
    assert unknown.cost is None and known.cost is not None
    assert [(e.priced, e.cost_usd) for e in events][:2] == [(False, 0.0), (True, known.cost.usd)]


@pytest.mark.redis
async def test_a_second_process_with_the_same_redis_sends_nothing(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    chunks = texts(50)
    cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    async with make_client(gateway, cache=cache) as client:
        first = await client.embed(model=MODEL, input=chunks, dimensions=8)
    assert first.misses == 50
    gateway.embeddings.reset()
    lines = [{"model": MODEL, "input": chunks, "dimensions": 8}]
    file = tmp_path / "embeddings.jsonl"
    file.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "limpet",
        "warm",
        str(file),
        "--redis",
        redis_url,
        "--prefix",
        redis_prefix,
        "--base-url",
        gateway.base_url("a"),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert orjson.loads(out)["skipped"] == 1
    assert gateway.embeddings.inputs == 0


@pytest.mark.redis
async def test_a_second_client_reads_the_vectors_of_the_first_through_redis(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    chunks = texts(20)

    def client() -> Client:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return make_client(gateway, cache=TieredCache(MemoryCache(), rc, hmac_key=b"k" * 32))

    async with client() as one:
        await one.embed(model=MODEL, input=chunks[:10])
    async with client() as two:
        e: Embeddings = await two.embed(model=MODEL, input=chunks)
    assert (e.hits, e.misses) == (10, 10)
    assert e.vectors == [fake_vector(MODEL, t) for t in chunks]
    assert gateway.embeddings.inputs == 20


@pytest.mark.redis
async def test_two_processes_embedding_overlapping_batches_send_each_input_once(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    """Two Clients (each its own memory tier and flight table, as two processes have)
    on one Redis: the inputs they share go upstream once, whoever leads them."""
    first, second = texts(40), texts(40)[20:] + texts(20, "other")
    gateway.endpoint("a").delay(0.2)  # the first request is slow: the other call follows it

    def client() -> Client:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return make_client(gateway, cache=TieredCache(MemoryCache(), rc, hmac_key=b"k" * 32))

    async with client() as one, client() as two:
        a, b = await asyncio.gather(
            one.embed(model=MODEL, input=first), two.embed(model=MODEL, input=second)
        )
    assert sorted(sent_inputs(gateway)) == sorted(set(first) | set(second))
    assert a.vectors == [fake_vector(MODEL, t) for t in first]
    assert b.vectors == [fake_vector(MODEL, t) for t in second]
    assert a.misses + b.misses == 60
    assert a.hits + a.coalesced + b.hits + b.coalesced == 20


async def test_other_fields_are_sent_and_enter_the_key(
    gateway: FakeGateway,
) -> None:
    async with make_client(gateway) as client:
        await client.embed(model=MODEL, input=["a"], input_type="query")
        await client.embed(model=MODEL, input=["a"], extra_body={"input_type": "passage"})
        again = await client.embed(
            model=MODEL, input=["a"], input_type="query", extra_headers={"X-Request-Id": "t1"}
        )
    assert [body.get("input_type") for body in gateway.embeddings.requests] == [
        "query",
        "passage",
    ]
    assert again.cache is CacheStatus.HIT


async def test_client_warm_takes_embedding_requests(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        report = await client.warm(
            [{"model": MODEL, "input": ["a", "b"]}, {"model": MODEL, "input": "a"}],
            concurrency=1,
        )
    assert (report.warmed, report.skipped, report.failed) == (1, 1, 0)
    assert gateway.embeddings.inputs == 2


async def test_closing_stops_an_embedding_call_waiting_on_upstream(gateway: FakeGateway) -> None:
    gateway.endpoint("a").delay(60)  # an upstream that never answers in time
    client = make_client(gateway, close_grace=0)
    call = asyncio.ensure_future(client.embed(model=MODEL, input=["a", "b"]))
    await gateway.embeddings.wait_for_requests(1)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call


@pytest.mark.redis
async def test_aclose_lets_a_request_its_caller_gave_up_on_land_and_be_stored(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    """A caller whose ``timeout`` passed leaves its request running (paid for, its answer
    is worth storing): closing the Client right after gives it the rest of the grace, so
    the next process's call is a hit, not paid again."""

    def client() -> Client:
        return make_client(gateway, cache=RedisCache.from_url(redis_url, prefix=redis_prefix))

    gateway.endpoint("a").hold_answers()
    first = client()
    with pytest.raises(APITimeoutError):
        await first.embed(model=MODEL, input=["a"], timeout=0.05)
    closing = asyncio.ensure_future(first.aclose())
    gateway.endpoint("a").release_answers()
    await closing
    async with client() as second:
        again = await second.embed(model=MODEL, input=["a"])
    assert (again.hits, again.misses) == (1, 0)
    assert again.vectors == [fake_vector(MODEL, "a")]
    assert len(gateway.embeddings.requests) == 1


@pytest.mark.redis
async def test_a_vector_signed_with_another_key_is_a_counted_miss(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def client(hmac_key: bytes) -> Client:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return make_client(gateway, cache=TieredCache(MemoryCache(), rc, hmac_key=hmac_key))

    async with client(b"a" * 32) as one:
        await one.embed(model=MODEL, input=["a", "b"])
    async with client(b"b" * 32) as two:
        e = await two.embed(model=MODEL, input=["a", "b"])
        assert two.cache is not None and two.cache.stats.corrupt == 2
    assert e.misses == 2 and e.vectors == [fake_vector(MODEL, "a"), fake_vector(MODEL, "b")]
    assert gateway.embeddings.inputs == 4


@pytest.mark.redis
async def test_a_lease_holder_reads_once_more_and_sends_only_what_is_still_missing(
    redis_url: str, redis_prefix: str
) -> None:
    """Between a call's lookup and its lease, another process may have stored an input:
    the lease holder reads again and sends only what is still missing, in one batch."""
    stored = {"k2": b"\x00\x00\x80?"}  # 1.0 as float32, stored by "another process"
    batches: list[list[str]] = []

    async def send(batch: list[tuple[str, str]]) -> dict[str, bytes | BaseException]:
        batches.append(sorted(text for _, text in batch))  # in the order the leases came
        return {key: b"\x00\x00\x00@" for key, _ in batch}  # 2.0

    async def read(key: str) -> bytes | None:
        return stored.get(key)

    async def share(key: str, vector: bytes) -> tuple[bytes | None, float]:
        return None, 0.0

    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    try:
        flight: RedisFlight[bytes] = RedisFlight(rc.flight_store)
        texts = {"k1": "one", "k2": "two", "k3": "three"}
        fetched = await fetch_shared(flight, texts, send, read, share)
    finally:
        await rc.aclose()
    assert batches == [["one", "three"]]
    assert fetched.from_others == {"k2"} and not fetched.failed
    assert fetched.vectors == {
        "k1": b"\x00\x00\x00@",
        "k2": b"\x00\x00\x80?",
        "k3": b"\x00\x00\x00@",
    }


@pytest.mark.memcached
async def test_vectors_are_shared_through_a_memcached_tier(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    def client() -> Client:
        mc = MemcachedCache.from_url(
            memcached_url, prefix=memcached_prefix, read_timeout=1.0, write_timeout=1.0
        )
        return make_client(gateway, cache=TieredCache(MemoryCache(), mc))

    async with client() as one:
        await one.embed(model=MODEL, input=texts(10), dimensions=4)
    async with client() as two:
        e = await two.embed(model=MODEL, input=texts(12), dimensions=4)
    assert (e.hits, e.misses) == (10, 2)
    assert e.vectors == [fake_vector(MODEL, t, 4) for t in texts(12)]
    assert gateway.embeddings.inputs == 12


async def test_an_input_awaited_by_a_call_without_deadline_outlives_its_senders_deadline(
    gateway: FakeGateway,
) -> None:
    # One admission slot, taken by a chat call the gateway holds: the embedding request
    # for "x" queues behind it. Its sender's deadline passes meanwhile; the caller that
    # awaits "x" too set none, and must get the vector, not the sender's timeout.
    async with held_slot(gateway) as slot:
        client = slot.client
        hasty = asyncio.ensure_future(client.embed(model=MODEL, input=["x"], timeout=0.05))
        patient = asyncio.ensure_future(client.embed(model=MODEL, input=["x"]))
        with pytest.raises(APITimeoutError):
            await hasty
        assert not patient.done() and gateway.embeddings.calls == 0
        await slot.release()
        e = await patient
    assert e.vectors == [fake_vector(MODEL, "x")]
    assert (e.hits, e.misses, e.coalesced) == (0, 0, 1)  # it awaited the hasty call's send
    assert gateway.embeddings.inputs == 1


@pytest.mark.parametrize("mode", ["bypass", "refresh"])
async def test_a_call_without_deadline_never_awaits_a_bypass_or_refresh_calls_inputs(
    gateway: FakeGateway, mode: CacheMode
) -> None:
    # A bypass or refresh call's requests end at its own deadline, so nobody may await
    # them: the patient call sends "x" itself, and is not failed by the hasty one's timeout.
    async with held_slot(gateway) as slot:
        client = slot.client
        hasty = asyncio.ensure_future(
            client.embed(model=MODEL, input=["x"], cache=mode, timeout=0.05)
        )
        patient = asyncio.ensure_future(client.embed(model=MODEL, input=["x"]))
        with pytest.raises(APITimeoutError):
            await hasty
        await slot.release()
        e = await patient
        again = await client.embed(model=MODEL, input=["x"])
    assert e.vectors == [fake_vector(MODEL, "x")]
    assert (e.hits, e.misses, e.coalesced) == (0, 1, 0)
    assert again.cache is CacheStatus.HIT  # the patient call stored what it sent
    assert gateway.embeddings.inputs == 1  # the hasty call's request never left its queue


async def test_a_bypass_calls_request_ends_when_its_caller_leaves(gateway: FakeGateway) -> None:
    """Nobody shares a bypass call's requests, nor is their answer stored: when its
    deadline passes, its request must not go on upstream, paid for and holding the
    endpoint's place on the wire, for nobody."""
    gateway.endpoint("a").delay(30)  # the request hangs upstream
    async with make_client(gateway, close_grace=0) as client:
        with pytest.raises(APITimeoutError):
            await client.embed(model=MODEL, input=["x"], cache="bypass", timeout=0.2)
        assert gateway.embeddings.calls == 1
        assert client.stats.endpoints["a"].in_flight == 0


@pytest.mark.parametrize(
    ("mode", "coalesce"), [("refresh", True), (None, False)], ids=["refresh", "no-coalescing"]
)
async def test_a_request_whose_answer_is_stored_outlives_its_caller(
    gateway: FakeGateway, mode: CacheMode, coalesce: bool
) -> None:
    """A call that shares nothing but stores (``refresh``, a Client without coalescing):
    its answer is paid for once sent, and stored when it comes, caller there or not."""
    gateway.endpoint("a").delay(0.5)
    async with make_client(gateway, coalesce=coalesce) as client:
        with pytest.raises(APITimeoutError):
            await client.embed(model=MODEL, input=["x", "y"], cache=mode, timeout=0.1)
        running = client._embeds.embedder._tasks
        await asyncio.wait(running)  # the request went on, and stored its answer
        again = await client.embed(model=MODEL, input=["x", "y"])
    assert (again.hits, again.misses) == (2, 0)
    assert gateway.embeddings.calls == 1


@pytest.mark.parametrize("mode", ["bypass", "refresh"])
async def test_a_normal_call_sends_and_stores_an_input_a_bypass_or_refresh_call_is_sending(
    gateway: FakeGateway, mode: CacheMode
) -> None:
    gateway.endpoint("a").delay(10)  # the bypass or refresh call's request hangs upstream
    client = make_client(gateway, close_grace=0)
    other = asyncio.ensure_future(client.embed(model=MODEL, input=["x"], cache=mode))
    await gateway.embeddings.wait_for_requests(1)
    e = await client.embed(model=MODEL, input=["x"])
    again = await client.embed(model=MODEL, input=["x"])
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await other
    assert e.vectors == [fake_vector(MODEL, "x")]
    assert (e.misses, e.coalesced) == (1, 0)
    assert again.cache is CacheStatus.HIT
    assert gateway.embeddings.calls == 2


async def test_an_input_whose_awaited_request_failed_is_not_counted_coalesced(
    gateway: FakeGateway,
) -> None:
    # Regression: the second call's "p", awaited in the first call's request, which
    # failed, was counted in embedding_coalesced, though no request answered it.
    gateway.endpoint("a").fail(500, times=FAST_RETRY.max_attempts)
    async with make_client(gateway) as client:
        first, second = await asyncio.gather(
            client.embed(model=MODEL, input=["p"]),
            client.embed(model=MODEL, input=["p"]),
            return_exceptions=True,
        )
        stats = client.stats
    assert isinstance(first, EmbeddingBatchError) and isinstance(second, EmbeddingBatchError)
    assert (first.failed, second.failed) == ((0,), (0,))
    assert sent_inputs(gateway) == ["p"] * FAST_RETRY.max_attempts  # one request, retried
    assert (stats.embedding_hits, stats.embedding_misses, stats.embedding_coalesced) == (0, 1, 0)

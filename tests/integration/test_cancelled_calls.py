"""Calls that end with neither an answer nor an upstream error are counted: a caller
cancelled, a stream closed before its end, the Client closed under a call. Before, they
were counted nowhere (``hits + misses + coalesced + bypassed + errors`` fell short of the
calls made by exactly those), and what a cancelled ``embed()`` call's requests cost, paid
all the same, never reached the stats. Against the FakeGateway over loopback; counts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from limpet import CacheStatus, Client, Endpoint, RetryConfig
from limpet.errors import ClientClosedError
from limpet.observe.events import CallEvent
from limpet.providers.pricing import PriceTable
from limpet.testing import FakeGateway
from tests.integration.cancelling import one_cancelled_one_answered
from tests.integration.chat import ask
from tests.integration.held_slot import held_slot

EMBEDDING_MODEL = "openai/text-embedding-3-small"


def client_for(gateway: FakeGateway, **options: Any) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"))
    return Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1), **options)


def listing_that_never_comes(asked: asyncio.Event) -> Callable[[], Awaitable[object]]:
    """A gateway's model listing (``PriceTable``'s source) that sets ``asked`` when it is
    fetched, and never comes."""

    async def listing() -> object:
        asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return listing


def calls_made(client: Client) -> int:
    stats = client.stats
    return stats.requests + stats.errors + stats.cancelled


async def test_a_cancelled_complete_is_counted_once_with_its_event(gateway: FakeGateway) -> None:
    events: list[CallEvent] = []
    upstream = gateway.endpoint("a")
    async with client_for(gateway, on_event=events.append) as client:
        await one_cancelled_one_answered(client, upstream)
        stats = client.stats
    assert (stats.cancelled, stats.errors, stats.misses) == (1, 0, 1)
    assert stats.upstream_calls == 2 and calls_made(client) == 2
    left = [event for event in events if event.error is not None]
    assert [(e.error, e.cache, e.stream) for e in left] == [("CancelledError", None, False)]
    assert stats.as_dict()["cancelled"] == 1


async def test_a_call_the_client_closed_under_is_counted_cancelled(gateway: FakeGateway) -> None:
    events: list[CallEvent] = []
    upstream = gateway.endpoint("a")
    client = client_for(gateway, on_event=events.append, close_grace=0.0)
    upstream.hold_answers()
    call = asyncio.ensure_future(client.complete(**ask("closed under")))
    await upstream.wait_for_calls(1)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call
    upstream.release_answers()
    assert (client.stats.cancelled, client.stats.errors) == (1, 0)
    assert [event.error for event in events] == ["ClientClosedError"]


async def test_a_stream_closed_before_its_end_is_counted_cancelled(gateway: FakeGateway) -> None:
    events: list[CallEvent] = []
    async with client_for(gateway, on_event=events.append) as client:
        async with client.stream(**ask("a long answer, read in part")) as stream:
            async for _ in stream:
                break  # the reader has what it wanted
        async with client.stream(**ask("read whole")) as whole:
            chunks = [chunk async for chunk in whole]
        stats = client.stats
    assert chunks and whole.completion is not None
    assert (stats.cancelled, stats.misses, stats.errors) == (1, 1, 0)
    assert [(e.error, e.stream) for e in events if e.cache is None] == [("CancelledError", True)]
    assert calls_made(client) == 2


async def test_a_cancelled_embed_is_counted_and_what_its_requests_cost_too(
    gateway: FakeGateway,
) -> None:
    # Its requests go on without it (another call may await their inputs, and they are
    # stored): they are paid for, so the stats count what they cost.
    async with client_for(gateway, cache=None) as reference:
        paid = await reference.embed(model=EMBEDDING_MODEL, input=["x", "y"])
    assert paid.usage.prompt_tokens > 0 and paid.cost is not None
    async with held_slot(gateway) as slot:
        client = slot.client
        left = asyncio.ensure_future(client.embed(model=EMBEDDING_MODEL, input=["x", "y"]))
        while not client.stats.endpoints["a"].queued:  # noqa: ASYNC110 (a state, no event)
            await asyncio.sleep(0)
        left.cancel()
        with pytest.raises(asyncio.CancelledError):
            await left
        await slot.release()
        again = await client.embed(model=EMBEDDING_MODEL, input=["x", "y"])
        chat = slot.blocker.result()
        stats = client.stats
    assert (again.misses, again.hits + again.coalesced) == (0, 2)  # the left call's inputs
    assert gateway.embeddings.calls == 2  # the reference's request and the left call's
    assert stats.cancelled == 1
    assert stats.prompt_tokens == chat.usage.prompt_tokens + paid.usage.prompt_tokens
    assert chat.cost is not None
    assert stats.cost_usd == pytest.approx(chat.cost.usd + paid.cost.usd)


async def test_an_embed_call_counts_what_it_paid_for_once(gateway: FakeGateway) -> None:
    # The spend is counted where the requests end, no longer again as the call returns.
    async with client_for(gateway) as client:
        first = await client.embed(model=EMBEDDING_MODEL, input=["x", "y"])
        again = await client.embed(model=EMBEDDING_MODEL, input=["x", "y"])
        stats = client.stats
    assert first.cost is not None and again.usage.prompt_tokens == 0
    assert stats.prompt_tokens == first.usage.prompt_tokens
    assert stats.cost_usd == pytest.approx(first.cost.usd)
    assert stats.cancelled == 0


async def test_an_embed_request_answered_before_the_client_closed_is_counted(
    gateway: FakeGateway,
) -> None:
    # Two requests of one input each; one is answered, the other slow when the Client
    # closes: what the answered one cost was paid, and counted as it came.
    async with client_for(gateway, cache=None) as reference:
        one = await reference.embed(model=EMBEDDING_MODEL, input=["x"])
    endpoint = Endpoint("a", gateway.base_url("a"), embedding_batch_size=1)
    client = Client(endpoints=[endpoint], cache=None, close_grace=0.0)
    gateway.endpoint("a").delay(600.0, times=1)  # one of the two requests
    call = asyncio.ensure_future(client.embed(model=EMBEDDING_MODEL, input=["x", "y"]))

    async def counted() -> None:
        while not client.stats.prompt_tokens:  # noqa: ASYNC110 (a state, no event)
            await asyncio.sleep(0)

    async with asyncio.timeout(10):  # a hang is a failure, not a wait
        await counted()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call
    stats = client.stats
    assert (stats.prompt_tokens, stats.cancelled) == (one.usage.prompt_tokens, 1)
    assert one.cost is not None and stats.cost_usd == pytest.approx(one.cost.usd)


async def test_an_embed_answer_being_priced_when_the_client_closes_counts_its_tokens(
    gateway: FakeGateway,
) -> None:
    # The first price lookup fetches the gateway's listing: the Client closes meanwhile.
    # The answer was paid for: its tokens are counted (its dollars could not be priced).
    asked = asyncio.Event()
    async with client_for(gateway, cache=None) as reference:
        paid = await reference.embed(model=EMBEDDING_MODEL, input=["x"])
    client = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=None,
        prices=PriceTable(listing_that_never_comes(asked)),
        close_grace=0.0,
    )
    call = asyncio.ensure_future(client.embed(model=EMBEDDING_MODEL, input=["x"]))
    async with asyncio.timeout(10):  # a hang is a failure, not a wait
        await asked.wait()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await call
    assert gateway.embeddings.calls == 2  # the reference's, and this one: answered
    assert (client.stats.prompt_tokens, client.stats.cancelled) == (paid.usage.prompt_tokens, 1)


async def test_a_completion_being_priced_when_its_caller_leaves_counts_what_it_reported(
    gateway: FakeGateway,
) -> None:
    # Its caller is cancelled while the first price lookup fetches the listing: the
    # answer was paid for, and the gateway said for how much (``usage.cost``), no price
    # table needed: both its tokens and those dollars are counted.
    asked = asyncio.Event()
    async with client_for(gateway) as reference:
        paid = await reference.complete(**ask("priced"))
    assert paid.cost is not None and paid.cost.usd > 0
    async with client_for(gateway, prices=PriceTable(listing_that_never_comes(asked))) as client:
        call = asyncio.ensure_future(client.complete(**ask("priced")))
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await asked.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stats = client.stats
        assert (stats.prompt_tokens, stats.cancelled) == (paid.usage.prompt_tokens, 1)
        assert stats.cost_usd == paid.cost.usd


@pytest.mark.parametrize("n", [1, 2])
async def test_a_stream_closed_once_every_choice_finished_is_answered_stored_and_counted(
    gateway: FakeGateway, n: int
) -> None:
    """``if chunk.finish_reason: break``: the reader has the whole answer but for the
    usage chunk limpet itself asked for. The answer was paid for: it must be let end,
    stored, and counted as the reader's, not cut and paid for again by the next caller."""
    async with client_for(gateway, cache=None) as reference:
        async with reference.stream(**ask("finished"), n=n) as whole:
            [_ async for _ in whole]
        paid = reference.stats.prompt_tokens
    async with client_for(gateway) as client:
        finished: set[int] = set()
        async with client.stream(**ask("finished"), n=n) as stream:
            async for chunk in stream:
                finished.update(c["index"] for c in chunk.raw["choices"] if c["finish_reason"])
                if len(finished) == n:
                    break
        stats = client.stats
        again = await client.complete(**ask("finished"), n=n)
    assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
    assert (stats.cancelled, stats.misses, stats.prompt_tokens) == (0, 1, paid)
    assert again.cache is CacheStatus.HIT  # stored whole
    assert gateway.total_calls == 2  # the reference's, and this one's: never paid again


async def test_a_replay_closed_once_every_choice_finished_is_a_counted_hit(
    gateway: FakeGateway,
) -> None:
    """The same reader on a cached answer: it had the whole answer, so it is a hit (its
    savings counted), not a cancelled call."""
    async with client_for(gateway) as client:
        async with client.stream(**ask("replayed")) as whole:
            [_ async for _ in whole]
        async with client.stream(**ask("replayed")) as stream:
            async for chunk in stream:
                if any(c["finish_reason"] for c in chunk.raw["choices"]):
                    break
        stats = client.stats
    assert stream.completion is not None and stream.completion.cache is CacheStatus.HIT
    assert (stats.cancelled, stats.hits, stats.misses) == (0, 1, 1)
    assert gateway.total_calls == 1


async def test_a_replay_whose_reader_is_cancelled_after_the_finish_counts_cancelled(
    gateway: FakeGateway,
) -> None:
    """Closed by its reader once whole, a replay is a hit; a reader whose task is
    cancelled is a cancelled call, there as on a live stream."""
    async with client_for(gateway) as client:
        async with client.stream(**ask("replayed")) as whole:
            [_ async for _ in whole]
        finished = asyncio.Event()

        async def reader() -> None:
            async with client.stream(**ask("replayed")) as stream:
                async for chunk in stream:
                    if any(c["finish_reason"] for c in chunk.raw["choices"]):
                        finished.set()
                        await asyncio.Event().wait()  # until cancelled

        task = asyncio.ensure_future(reader())
        await finished.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = client.stats
    assert (stats.cancelled, stats.hits, stats.misses) == (1, 0, 1)


async def test_a_stream_closed_past_its_usage_chunk_is_answered_stored_and_counted(
    gateway: FakeGateway,
) -> None:
    # Its reader had everything but [DONE]: the answer is whole, its own and paid for.
    async with client_for(gateway, cache=None) as reference:
        async with reference.stream(**ask("whole")) as whole:
            [_ async for _ in whole]
        paid = reference.stats.prompt_tokens
    async with client_for(gateway) as client:
        async with client.stream(**ask("whole")) as stream:
            async for chunk in stream:
                if chunk.raw.get("usage"):
                    break  # the last chunk: the reader has everything
        stats = client.stats
        again = await client.complete(**ask("whole"))
    assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
    assert (stats.cancelled, stats.misses, stats.prompt_tokens) == (0, 1, paid)
    assert again.cache is CacheStatus.HIT  # stored whole

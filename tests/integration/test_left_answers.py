"""An answer whose caller left is still paid for: it is the first remaining caller's own.

A call that started an upstream request and left (cancelled, past its own deadline, a
stream closed) while others waited on it left them an answer paid for all the same.
Before, they were all told it was shared (``coalesced``, costing nothing), and what it
cost was counted nowhere: not in ``Client.stats``, not in any event (so not in
Prometheus), not in the fleet's counters. Now the first caller still waiting claims it:
a ``miss`` with what it cost, in the stats, the fleet and its event; and the stats count
what every upstream answer cost as it comes, whoever is still there. Against the
FakeGateway over loopback; counts, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from limpet import (
    CacheStatus,
    Client,
    Completion,
    CompletionStream,
    Endpoint,
    PriceTable,
    RetryConfig,
)
from limpet.errors import APITimeoutError
from limpet.observe.events import CallEvent
from limpet.testing import FakeGateway
from tests.integration.cancelling import flight_waiters
from tests.integration.chat import ask
from tests.redis_servers import eventually

LONG = 30.0  # seconds: a failure, not a hang


@pytest.fixture
async def watched(gateway: FakeGateway) -> AsyncIterator[tuple[Client, list[CallEvent]]]:
    events: list[CallEvent] = []
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(
        endpoints=[endpoint], retry=RetryConfig(max_attempts=1), on_event=events.append
    ) as client:
        yield client, events


async def stream_readers(client: Client, count: int) -> None:
    """Returns once ``count`` readers read the one upstream stream running."""
    flights = client._chat.streams
    assert flights is not None

    async def reading() -> bool:
        return any(one.readers == count for one in flights._flights.values())

    await eventually(reading, what=f"{count} readers of the stream")


async def read_to_end(stream: CompletionStream) -> Completion | None:
    async with stream:
        async for _ in stream:
            pass
    return stream.completion


def paid_once(client: Client, events: list[CallEvent], answer: Completion, shared: int = 0) -> None:
    """``answer`` is its caller's own, and what it cost is counted once: in the stats and
    in exactly one event (its caller's); ``shared`` callers shared it."""
    assert answer.cache is CacheStatus.MISS
    assert answer.cost is not None and answer.cost.usd > 0
    stats = client.stats
    assert (stats.misses, stats.coalesced, stats.upstream_calls) == (1, shared, 1)
    assert stats.cost_usd == pytest.approx(answer.cost.usd)
    assert stats.prompt_tokens == answer.usage.prompt_tokens > 0
    assert stats.completion_tokens == answer.usage.completion_tokens
    billed = [event for event in events if event.cost_usd]
    assert [(e.cache, e.cost_usd) for e in billed] == [(CacheStatus.MISS, answer.cost.usd)]
    assert billed[0].usage.prompt_tokens == answer.usage.prompt_tokens


@pytest.mark.parametrize("kind", ["complete", "stream"])
async def test_a_complete_left_by_its_leader_is_its_first_waiters_own(
    gateway: FakeGateway, watched: tuple[Client, list[CallEvent]], kind: str
) -> None:
    # The first waiter: another complete() call, or a stream that waits on complete()'s
    # flight and replays its answer; then a complete() call that shares it.
    client, events = watched
    upstream = gateway.endpoint("a")
    upstream.hold_answers()
    leader = asyncio.ensure_future(client.complete(**ask("left by its leader")))
    await upstream.wait_for_calls(1)
    first: asyncio.Future[Completion | None] = asyncio.ensure_future(
        client.complete(**ask("left by its leader"))
        if kind == "complete"
        else read_to_end(client.stream(**ask("left by its leader")))
    )
    await flight_waiters(client, 2)
    second = asyncio.ensure_future(client.complete(**ask("left by its leader")))
    await flight_waiters(client, 3)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    upstream.release_answers()
    async with asyncio.timeout(LONG):
        answer, shared = await asyncio.gather(first, second)
    assert answer is not None
    assert shared.cache is CacheStatus.COALESCED and shared.content == answer.content
    assert client.stats.cancelled == 1
    paid_once(client, events, answer, shared=1)


async def test_a_complete_past_its_own_deadline_leaves_its_answer_to_a_waiter(
    gateway: FakeGateway, watched: tuple[Client, list[CallEvent]]
) -> None:
    client, events = watched
    upstream = gateway.endpoint("a")
    upstream.hold_answers()
    leader = asyncio.ensure_future(client.complete(**ask("a short deadline"), timeout=0.05))
    await upstream.wait_for_calls(1)
    waiter = asyncio.ensure_future(client.complete(**ask("a short deadline")))
    await flight_waiters(client, 2)
    with pytest.raises(APITimeoutError):
        await leader  # its deadline, while its request is held upstream
    upstream.release_answers()
    async with asyncio.timeout(LONG):
        answer = await waiter
    assert client.stats.errors == 1
    paid_once(client, events, answer)


@pytest.mark.parametrize("other", ["stream", "complete"])
async def test_a_stream_its_starter_closed_is_the_other_readers_own(
    gateway: FakeGateway, watched: tuple[Client, list[CallEvent]], other: str
) -> None:
    # The other reader: a stream of the same request, or a complete() call that joins
    # the stream and reads it to its end.
    client, events = watched
    upstream = gateway.endpoint("a")
    upstream.pause_stream(after_chunks=2)
    first = client.stream(**ask("a stream left"))
    await first.__aenter__()
    await anext(first)  # the stream is upstream; the first reader has its first chunk
    reading: asyncio.Future[Completion | None] = asyncio.ensure_future(
        read_to_end(client.stream(**ask("a stream left")))
        if other == "stream"
        else client.complete(**ask("a stream left"))
    )
    await stream_readers(client, 2)
    await first.aclose()  # before its end: cut for this reader alone
    upstream.resume_stream()
    async with asyncio.timeout(LONG):
        answer = await reading
    assert answer is not None and first.completion is None
    assert client.stats.cancelled == 1
    paid_once(client, events, answer)


async def test_a_stream_the_upstream_sent_whole_is_stored_when_its_reader_leaves(
    gateway: FakeGateway,
) -> None:
    """Its one reader left (a proxy's caller hung up: the relay lags behind the upstream)
    after the upstream had sent the whole stream, while it was priced (the first call
    fetches the gateway's listing): paid for, it is stored, not cut and paid again."""
    listed, fetching = asyncio.Event(), asyncio.Event()

    async def listing() -> object:
        fetching.set()
        await listed.wait()
        return {"data": []}

    upstream = gateway.endpoint("a")
    upstream.pause_stream(after_chunks=2)
    endpoint = Endpoint("a", gateway.base_url("a"))
    # Priced once the listing comes however long it takes (not past load_wait's default).
    table = PriceTable(listing, load_wait=600.0)
    async with Client(endpoints=[endpoint], prices=table) as client:
        flights = client._chat.streams
        assert flights is not None
        stream = client.stream(**ask("sent whole"))
        await stream.__aenter__()
        await anext(stream)  # one chunk read; the rest comes while nobody reads
        upstream.resume_stream()

        async def sent_whole() -> bool:
            return fetching.is_set() and all(
                flight.exchange is not None and flight.exchange.received
                for flight in flights._flights.values()
            )

        await eventually(sent_whole, what="the stream sent whole, being priced")
        await stream.aclose()
        listed.set()
        if flights.running:  # a reported cost is priced without the listing
            await asyncio.wait(flights.running)
        again = await client.complete(**ask("sent whole"))
    assert again.cache is CacheStatus.HIT
    assert upstream.calls == 1

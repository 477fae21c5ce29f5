"""Streams left open between chunks by a reader that has gone without closing them (the
contract's bare ``async for chunk in client.stream(...): ... break``, the stream still
referenced; a task cancelled between chunks): the upstream answer passes to a reader
sharing it, and ``Client.aclose()`` closes them at once, counted cancelled, rather than
waiting its grace for a reader that will never come back. Against the FakeGateway over
loopback, its stream held after two chunks. Counts and states, never times."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from limpet import CacheStatus, Client, CompletionStream, Endpoint, RetryConfig
from limpet.errors import ClientClosedError
from limpet.observe.events import CallEvent
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.test_lifecycle import limpet_tasks
from tests.integration.test_stream import joined

# A close grace no test outlives: ``aclose()`` waiting it out for a stream is a failure.
FOREVER = 600.0
# What turns such a wait into a failure rather than a hung run: a guard, never a clock
# a test's outcome depends on.
HUNG = 20.0


def make_client(gateway: FakeGateway, **options: Any) -> Client:
    options.setdefault("close_grace", FOREVER)
    endpoint = Endpoint("a", gateway.base_url("a"))
    return Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1), **options)


async def close(client: Client) -> None:
    async with asyncio.timeout(HUNG):
        await client.aclose()


async def break_after_one(stream: CompletionStream) -> None:
    async for _ in stream:
        break  # no aclose(): the caller still holds the stream


def settled(client: Client, calls: int) -> bool:
    """Whether each of ``calls`` stream calls was counted exactly once."""
    stats = client.stats
    return stats.misses + stats.coalesced + stats.cancelled == calls


async def test_a_follower_gets_as_its_own_the_answer_of_a_leader_gone_after_a_bare_break(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    leader = client.stream(**ask())
    await asyncio.create_task(break_after_one(leader))
    follower = client.stream(**ask())
    await anext(follower)  # it has joined the leader's upstream stream
    ep.resume_stream()
    async for _ in follower:
        pass
    assert follower.completion is not None
    assert follower.completion.cache is CacheStatus.MISS  # the claim passed: no saving
    assert (client.stats.coalesced, client.stats.saved_usd) == (0, 0.0)
    await close(client)
    assert client.stats.cancelled == 1  # the leader's call, closed by aclose()
    assert settled(client, 2)
    assert ep.calls == 1
    with pytest.raises(ClientClosedError):
        await anext(leader)
    assert limpet_tasks() == []


async def test_a_follower_gets_as_its_own_the_answer_of_a_leader_cancelled_between_chunks(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    leader = client.stream(**ask())
    read = asyncio.Event()

    async def read_one_then_wait() -> None:
        async for _ in leader:
            read.set()
            await asyncio.Event().wait()  # its own work between chunks, cancelled

    reading = asyncio.create_task(read_one_then_wait())
    await read.wait()
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    follower = client.stream(**ask())
    await anext(follower)
    ep.resume_stream()
    async for _ in follower:
        pass
    assert follower.completion is not None
    assert follower.completion.cache is CacheStatus.MISS
    await close(client)
    assert (client.stats.misses, client.stats.cancelled) == (1, 1)
    assert settled(client, 2)
    assert client.stats.saved_usd == 0.0


async def test_aclose_at_once_closes_a_stream_its_own_caller_broke_out_of(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    stream = client.stream(**ask())
    await break_after_one(stream)  # in the task that then closes the Client
    await close(client)
    assert client.stats.cancelled == 1
    assert settled(client, 1)
    with pytest.raises(ClientClosedError):
        await anext(stream)
    assert limpet_tasks() == []
    ep.resume_stream()


async def test_aclose_passes_the_claim_of_a_gone_leader_to_a_follower_still_reading(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    cancelled = asyncio.Event()

    def on_event(event: CallEvent) -> None:
        if event.cache is None:
            cancelled.set()

    client = make_client(gateway, on_event=on_event)
    leader = client.stream(**ask())
    await asyncio.create_task(break_after_one(leader))
    follower = client.stream(**ask())
    await anext(follower)
    closing = asyncio.create_task(close(client))
    async with asyncio.timeout(HUNG):
        await cancelled.wait()  # the leader's stream, closed at once: its reader has gone
    assert not closing.done()  # the follower, still reading, has the grace
    ep.resume_stream()
    async for _ in follower:
        pass
    await closing
    assert follower.completion is not None
    assert follower.completion.cache is CacheStatus.MISS
    assert (client.stats.misses, client.stats.cancelled) == (1, 1)
    assert settled(client, 2)


async def test_aclose_closes_a_stream_whose_reader_breaks_out_during_the_grace(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    stream = client.stream(**ask())
    read, go_on = asyncio.Event(), asyncio.Event()

    async def read_then_break() -> None:
        async for _ in stream:
            read.set()
            await go_on.wait()
            break

    reading = asyncio.create_task(read_then_break())
    await read.wait()
    closing = asyncio.create_task(close(client))
    # aclose() is in its grace, watching the reader's task, which then breaks out.
    await joined(lambda: bool(client._pipelines.streams._watched))
    go_on.set()
    await reading
    await closing
    assert client.stats.cancelled == 1
    assert settled(client, 1)
    ep.resume_stream()


async def test_aclose_past_its_grace_closes_a_stream_held_open_by_a_reader_still_running(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway, close_grace=0)
    stream = client.stream(**ask())
    read, go_on = asyncio.Event(), asyncio.Event()

    async def read_then_hold() -> None:
        async for _ in stream:
            read.set()
            await go_on.wait()  # its own work between chunks, past the grace

    reading = asyncio.create_task(read_then_hold())
    await read.wait()
    await close(client)
    assert client.stats.cancelled == 1  # counted, though its reader is away
    go_on.set()
    with pytest.raises(ClientClosedError):
        await reading  # it reads on: the Client closed its stream
    assert settled(client, 1)
    ep.resume_stream()


@pytest.mark.parametrize("task_per_chunk", [False, True], ids=["its own task", "a task per chunk"])
async def test_a_leader_still_reading_keeps_its_claim(
    gateway: FakeGateway, task_per_chunk: bool
) -> None:
    # Its task alive, a leader slower than its follower has not gone: the answer is its.
    # Nor has one whose chunk a task made to await it alone read (asyncio.wait_for on
    # Python 3.11), though that task ended.
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    leader = client.stream(**ask())
    await (asyncio.create_task(anext(leader)) if task_per_chunk else anext(leader))
    follower = client.stream(**ask())
    await anext(follower)
    ep.resume_stream()
    async for _ in follower:
        pass
    async for _ in leader:
        pass
    assert follower.completion is not None and leader.completion is not None
    assert (leader.completion.cache, follower.completion.cache) == (
        CacheStatus.MISS,
        CacheStatus.COALESCED,
    )
    await close(client)
    assert client.stats.cancelled == 0


async def test_a_complete_call_joining_the_stream_of_a_gone_leader_gets_it_as_its_own(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway)
    leader = client.stream(**ask())
    await asyncio.create_task(break_after_one(leader))
    joining = asyncio.create_task(client.complete(**ask()))
    flights = client._pipelines.stream_flights._flights
    # The leader's stream never left the flight: its reader and complete()'s.
    await joined(lambda: any(f.readers == 2 for f in flights.values()))
    ep.resume_stream()
    completion = await joining
    assert completion.cache is CacheStatus.MISS
    assert ep.calls == 1
    await close(client)
    assert (client.stats.misses, client.stats.coalesced, client.stats.cancelled) == (1, 0, 1)

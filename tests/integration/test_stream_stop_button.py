"""A stream stopped by ``aclose()`` from another task (a stop button) as its reader waits
for ``[DONE]``, the whole answer read: a close by its reader, as ``aclose()`` in the
reader's own task is, not a cancelled call; the reader's task cancelled by anyone else
stays cancelled. From a scripted upstream over loopback, which holds ``[DONE]``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from limpet import CacheStatus, Client, CompletionStream, Endpoint, RetryConfig
from limpet.pipeline import stream_flights
from tests.integration.chat import ask
from tests.integration.scripted import ScriptedUpstream, chunk, scripted_upstream, usage_chunk


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        scripted.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
        scripted.before_done = asyncio.Event()
        yield scripted


@pytest.fixture
async def client(upstream: ScriptedUpstream) -> AsyncIterator[Client]:
    endpoint = Endpoint("a", upstream.url)
    async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as client:
        try:
            yield client
        finally:
            release_done(upstream)  # so that a test failing early leaves no stream held


async def reading_to_the_usage(stream: CompletionStream) -> asyncio.Task[int]:
    """A task reading ``stream`` to its end, returned once it has read the usage chunk and
    waits for the next: only ``[DONE]`` is left to come."""
    usage_read = asyncio.Event()

    async def read() -> int:
        count = 0
        async for piece in stream:
            count += 1
            if piece.raw.get("usage"):
                usage_read.set()  # it runs on into its wait for [DONE]
        return count

    reader = asyncio.create_task(read())
    await usage_read.wait()
    return reader


def release_done(upstream: ScriptedUpstream) -> None:
    assert upstream.before_done is not None
    upstream.before_done.set()


async def test_a_stream_stopped_from_another_task_past_its_usage_is_answered_and_stored(
    upstream: ScriptedUpstream, client: Client
) -> None:
    # Regression: aclose() from another task cancelled the reader's wait for [DONE], and
    # that cancellation was taken for the caller's: completion None, the call counted
    # cancelled, and the answer it paid for counted as no one's miss.
    stream = client.stream(**ask())
    reader = await reading_to_the_usage(stream)
    stopping = asyncio.create_task(stream.aclose())  # the stop button
    release_done(upstream)  # the upstream ends within the close's grace
    await stopping
    assert await reader == 2
    assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
    stats = client.stats
    assert (stats.cancelled, stats.misses, stats.completion_tokens) == (0, 1, 2)
    assert (await client.complete(**ask())).cache is CacheStatus.HIT  # stored
    assert upstream.calls == 1


async def test_a_leader_stopped_from_another_task_past_its_usage_pays_not_its_follower(
    upstream: ScriptedUpstream, client: Client
) -> None:
    # Regression: the stopped leader was counted cancelled, and the follower that joined
    # its stream took the claim: counted as the one who paid for the answer.
    leading, following = client.stream(**ask()), client.stream(**ask())
    leader = await reading_to_the_usage(leading)
    follower = await reading_to_the_usage(following)  # joined the same stream
    stopping = asyncio.create_task(leading.aclose())
    release_done(upstream)
    await stopping
    assert (await leader, await follower) == (2, 2)
    assert leading.completion is not None and following.completion is not None
    assert leading.completion.cache is CacheStatus.MISS
    assert following.completion.cache is CacheStatus.COALESCED
    stats = client.stats
    assert (stats.cancelled, stats.misses, stats.coalesced) == (0, 1, 1)
    assert upstream.calls == 1


async def test_a_reader_cancelled_as_its_stream_is_stopped_stays_cancelled(
    upstream: ScriptedUpstream, client: Client
) -> None:
    stream = client.stream(**ask())
    reader = await reading_to_the_usage(stream)
    stopping = asyncio.create_task(stream.aclose())
    reader.cancel()  # its caller cancelled too, by someone else
    release_done(upstream)
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stopping
    assert stream.completion is None
    assert (client.stats.cancelled, client.stats.misses) == (1, 0)


async def test_a_reader_cancelled_while_its_stopped_stream_ends_stays_cancelled(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = asyncio.Event()
    ended_soon = stream_flights._ended_soon

    def waiting_for_the_end(flight: stream_flights._StreamFlight) -> Awaitable[bool]:
        waiting.set()
        return ended_soon(flight)

    monkeypatch.setattr(stream_flights, "_ended_soon", waiting_for_the_end)
    stream = client.stream(**ask())
    reader = await reading_to_the_usage(stream)
    stopping = asyncio.create_task(stream.aclose())
    # The stopped reader waits for the upstream's end (one that ends at once fails).
    waited = asyncio.ensure_future(waiting.wait())
    await asyncio.wait({waited, reader}, return_when=asyncio.FIRST_COMPLETED)
    waited.cancel()
    reader.cancel()  # and its caller is cancelled, by someone else
    with pytest.raises(asyncio.CancelledError):
        await reader
    await stopping
    assert stream.completion is None
    assert (client.stats.cancelled, client.stats.misses) == (1, 0)

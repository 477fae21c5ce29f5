"""Stream readers of one Client still looking in the cache while the reader that started
the upstream stream leaves: found by the cancellation sweep (``test_cancel_sweep.py``).

The shared tier here is a plain one whose reads wait until the test lets each go, so the
test knows which reader is still reading. Counts at the FakeGateway, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from limpet import CacheStatus, Client, Completion, Endpoint, MemoryCache, TieredCache
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.soak_adversity import landed


class GatedTier:
    """A plain remote tier (a dict) whose every read waits until the test lets it go:
    ``await held.get()`` is the next read waiting, a future to set."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gated = False
        self.held: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def get(self, key: str) -> bytes | None:
        if self.gated:
            gate = asyncio.get_running_loop().create_future()
            self.held.put_nowait(gate)
            await gate
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def clear(self) -> None:
        self.data.clear()

    async def aclose(self) -> None:
        pass


@pytest.fixture
def tier() -> GatedTier:
    return GatedTier()


@pytest.fixture
async def client(gateway: FakeGateway, tier: GatedTier) -> AsyncIterator[Client]:
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), tier)) as c:
        await c.forget(**ask())  # the generations keys are made of, read once
        yield c


async def read(client: Client, into: list[StreamChunk]) -> Completion | None:
    async with client.stream(**ask()) as stream:
        async for chunk in stream:
            into.append(chunk)
    return stream.completion


async def test_a_reader_leaving_its_upstream_stream_leaves_it_to_one_still_looking(
    client: Client, gateway: FakeGateway, tier: GatedTier
) -> None:
    # The first reader misses and starts the upstream stream, then is cancelled while the
    # second is still reading the shared tier. The stream must go on for the second,
    # which joins it when its read misses: one upstream call for the two, not two.
    ep = gateway.endpoint("a")
    ep.hold_answers()
    tier.gated = True
    first_chunks: list[StreamChunk] = []
    second_chunks: list[StreamChunk] = []
    first = asyncio.create_task(read(client, first_chunks))
    first_read = await tier.held.get()
    second = asyncio.create_task(read(client, second_chunks))
    second_read = await tier.held.get()
    first_read.set_result(None)  # a miss: the first reader starts the upstream stream
    await ep.wait_for_calls(1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert first_chunks == []
    second_read.set_result(None)  # a miss too, the upstream stream still going
    ep.release_answers()
    async with asyncio.timeout(30):  # a failure, not a hang
        completion = await second
    # The stream its first reader left is this one's own, with what it cost.
    assert completion is not None and completion.cache is CacheStatus.MISS
    assert completion.cost is not None and completion.cost.usd > 0
    assert "".join(chunk.content or "" for chunk in second_chunks) == completion.content
    assert ep.calls == 1
    tier.gated = False
    again = await client.complete(**ask())
    assert again.cache is CacheStatus.HIT and again.content == completion.content
    assert ep.calls == 1


async def test_the_upstream_stream_of_a_reader_cancelled_alone_is_dropped(
    client: Client, gateway: FakeGateway, tier: GatedTier
) -> None:
    # No reader is left, nor looking: the upstream stream stops, and nothing is stored.
    ep = gateway.endpoint("a")
    ep.hold_answers()
    tier.gated = True
    only = asyncio.create_task(read(client, []))
    (await tier.held.get()).set_result(None)
    await ep.wait_for_calls(1)
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    async with asyncio.timeout(30):  # the answer is held: only a cancellation ends it
        await landed(client)
    ep.release_answers()
    tier.gated = False
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_a_reader_still_looking_that_finds_the_answer_drops_the_upstream_stream(
    client: Client, gateway: FakeGateway, tier: GatedTier
) -> None:
    # The reader still looking when the last one left finds the answer after all (as if
    # another process had stored it meanwhile): it replays that, and the upstream stream
    # nobody reads is dropped.
    ep = gateway.endpoint("a")
    stored = await client.complete(**ask())
    entry = dict(tier.data)
    await client.forget(**ask())
    ep.hold_answers()
    tier.gated = True
    first = asyncio.create_task(read(client, []))
    first_read = await tier.held.get()
    replayed: list[StreamChunk] = []
    second = asyncio.create_task(read(client, replayed))
    second_read = await tier.held.get()
    first_read.set_result(None)
    await ep.wait_for_calls(2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    tier.data.update(entry)
    second_read.set_result(None)
    async with asyncio.timeout(30):  # the answer is held: only a cancellation ends it
        completion = await second
        await landed(client)
    assert completion is not None and completion.cache is CacheStatus.HIT
    assert completion.raw["id"] == stored.raw["id"]
    assert "".join(chunk.content or "" for chunk in replayed) == stored.content
    ep.release_answers()
    assert ep.calls == 2

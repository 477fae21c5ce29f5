"""Thousands of callers in one event-loop turn, on each tier setup, through two Clients
(two processes, as far as a shared tier knows): every caller gets exactly the answer the
gateway produced for its own request, and upstream sees each distinct request as few
times as the design allows.

A storm is where answers get mixed up if they ever do: thousands of futures settled from
one flight, flights of different keys landing in the same turn, one stream broadcast to
many readers, one embedding batch answering many callers by index. After each storm,
nothing is left behind (no lease, no limpet task, nothing logged amiss), each Client's
stats count what its callers were given, and the same requests again are hits with the
very answers the storm stored. Calls are all created before the loop runs any of them,
so they start in one turn.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from limpet import CacheStatus, Client, Completion, Embeddings
from limpet.http.chunks import StreamChunk
from tests.integration.cancel_sweep import (
    EMBED_MODEL,
    LONG,
    TIERS_AND_CLUSTER,
    Counts,
    Sweep,
    warm,
)
from tests.integration.chat import ask

T = TypeVar("T")

CALLERS = 5_000
READERS = 2_000  # stream() readers: each replays every chunk, so fewer
POOL = 300  # distinct embedding inputs
PER_CALL = 4  # inputs per embed() call


async def at_once(calls: list[Awaitable[T]]) -> list[T]:
    """Every call, started in one loop turn (each its own task, as a server's would be)."""
    async with asyncio.timeout(LONG):
        return await asyncio.gather(*calls)


def on_both(clients: tuple[Client, Client], texts: list[str], n: int) -> list[tuple[Client, str]]:
    """``n`` callers cycling through ``texts``, each text asked by both Clients alike."""
    return [(clients[i // len(texts) % 2], texts[i % len(texts)]) for i in range(n)]


def upstream_per_request(world: Sweep) -> int:
    """How often one distinct request may reach upstream in a storm through both Clients:
    once on a shared tier; once per Client, each with its own memory tier, without one."""
    return 1 if world.shared is not None else 2


async def two_clients(world: Sweep) -> tuple[Client, Client]:
    a, b = world.client(), world.client()
    await warm(world, [a, b])
    return a, b


async def stream_whole(client: Client, prompt: str) -> tuple[Completion, list[StreamChunk]]:
    """``prompt`` as a stream, read whole."""
    chunks: list[StreamChunk] = []
    async with client.stream(**ask(prompt)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
        completion = stream.completion
    assert completion is not None
    return completion, chunks


def served(results: list[Completion]) -> collections.Counter[CacheStatus]:
    return collections.Counter(result.cache for result in results)


@pytest.mark.parametrize("world", TIERS_AND_CLUSTER, indirect=True)
@pytest.mark.parametrize("prompts", [1, 50], ids=["one request", "50 requests"])
async def test_complete_storm(world: Sweep, prompts: int) -> None:
    clients = await two_clients(world)
    texts = [f"storm of {prompts}: {p}" for p in range(prompts)]
    counts = Counts(world, clients)
    callers = on_both(clients, texts, CALLERS)
    results = await at_once([client.complete(**ask(text)) for client, text in callers])

    answer_of: dict[tuple[int, str], str] = {}
    for (client, text), result in zip(callers, results, strict=True):
        answer = world.answered(text, result)  # its own request's answer, exactly
        counts.saw(client, result)
        # One answer per request and Client: the stored one every caller got.
        assert answer_of.setdefault((id(client), text), answer.id) == answer.id
    await world.nothing_left()
    allowed = upstream_per_request(world)
    assert {world.requests(text) for text in texts} == {allowed}
    assert served(results)[CacheStatus.MISS] == allowed * prompts
    counts.check(requests=allowed * prompts, cancelled=0)
    for text in texts:
        world.allow(text, allowed)
        for client in clients:
            again = await client.complete(**ask(text))
            assert again.cache is CacheStatus.HIT
            assert again.raw["id"] == answer_of[id(client), text]


@pytest.mark.parametrize("world", TIERS_AND_CLUSTER, indirect=True)
async def test_stream_storm(world: Sweep) -> None:
    clients = await two_clients(world)
    texts = [f"stream storm: {p}" for p in range(20)]
    callers = on_both(clients, texts, READERS)
    counts = Counts(world, clients)
    read = await at_once([stream_whole(client, text) for client, text in callers])

    chunks_of: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for (client, text), (completion, chunks) in zip(callers, read, strict=True):
        answer = world.streamed(text, chunks, whole=True)
        assert world.answered(text, completion) is answer
        counts.saw(client, completion)
        raw = [chunk.raw for chunk in chunks]
        # Every reader of one request on one Client read the very same chunks.
        assert chunks_of.setdefault((id(client), text), raw) == raw
    await world.nothing_left()
    allowed = upstream_per_request(world)
    assert {world.requests(text) for text in texts} == {allowed}
    counts.check(requests=allowed * len(texts), cancelled=0)
    for text in texts:
        world.allow(text, allowed)
        for client in clients:
            again, replayed = await stream_whole(client, text)
            assert again.cache is CacheStatus.HIT
            assert [chunk.raw for chunk in replayed] == chunks_of[id(client), text]


@pytest.mark.parametrize("world", TIERS_AND_CLUSTER, indirect=True)
async def test_embed_storm(world: Sweep) -> None:
    clients = await two_clients(world)
    pool = [f"storm input {n}" for n in range(POOL)]
    # Overlapping batches, some with a repeat: caller i asks for inputs 7i, 7i+13, ...
    batches = [[pool[(7 * i + 13 * j) % POOL] for j in range(PER_CALL)] for i in range(CALLERS)]
    batches[::97] = [batch[:-1] + batch[:1] for batch in batches[::97]]
    callers = [(clients[i % 2], batch) for i, batch in enumerate(batches)]
    counts = Counts(world, clients)
    sent_before = len(world.embedded())
    results = await at_once(
        [client.embed(model=EMBED_MODEL, input=batch) for client, batch in callers]
    )

    for (client, batch), result in zip(callers, results, strict=True):
        world.vectors_right(batch, result)  # in its own order, repeats included
        counts.saw(client, result)
    await world.nothing_left()
    sent = collections.Counter(world.embedded()[sent_before:])
    assert set(sent) == set(pool)
    assert set(sent.values()) == {upstream_per_request(world)}
    counts.check(requests=0, cancelled=0)
    for client in clients:
        again = await client.embed(model=EMBED_MODEL, input=pool)
        assert isinstance(again, Embeddings)
        world.vectors_right(pool, again)
        assert (again.hits, again.misses, again.coalesced) == (POOL, 0, 0)

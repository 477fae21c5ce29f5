"""A systematic cancellation sweep: every public call kind, cancelled after k event-loop
turns for every k from 0 until the call finishes before its cancellation, on each tier
setup (memory only; memory + Redis; memory + Memcached).

A caller can be cancelled at any await, and each await is a different state to leave
behind: a key half-read, a lease taken but not yet known to be, a flight whose last
caller just left, a stream half-broadcast, an embedding batch half-sent. The targeted
tests (``test_cancellation.py``) stop a call at the points someone thought of; this one
stops it at every turn in turn, and after each checks that:

- the cancelled caller ended cancelled (or with its result, when it finished first), and
  every other caller (an identical follower, another Client on the shared tier, another
  reader of the stream, another ``embed()`` asking for some of the same inputs) got
  exactly an answer the gateway produced for its own request;
- once the Clients' background work has ended, no lease is held, no limpet task runs, and
  nothing was logged amiss;
- a following identical call is served right: a hit with the stored answer when one was
  stored, else a miss with a fresh one; upstream calls are as few as the design allows
  (one per key among concurrent callers; a lone cancelled caller's may have been made);
- ``client.stats`` counted what the callers were given.

And each sweep checks it reached the states it is there for (a reader cancelled between
two chunks, a flight left to its follower, an answer stored after its caller left...),
so that a faster or slower machine cannot turn it into a sweep of nothing. Each round
uses prompts and inputs of its own, so rounds never meet in the cache; the report of a
failure says which k it was.
"""

from __future__ import annotations

import asyncio
import collections

import pytest

from limpet import CacheStatus, Client, Completion
from limpet.http.chunks import StreamChunk
from limpet.pipeline.stream import CompletionStream
from tests.integration.cancel_sweep import (
    EMBED_MODEL,
    LONG,
    SHARED_TIERS,
    TIERS,
    Counts,
    Sweep,
    cancel_after,
    ended,
    key_of,
    sweep_until,
    warm,
)
from tests.integration.chat import ask

# How a reader of a stream another reader started may be served.
SHARED_STATUSES = {CacheStatus.MISS, CacheStatus.COALESCED, CacheStatus.HIT}


async def read(stream: CompletionStream, into: list[StreamChunk]) -> Completion | None:
    """Read ``stream`` whole into ``into`` (closed if left early), giving a turn to
    other work after each chunk as a reader that uses it would: a loopback stream comes
    in at once, and this way a reader is found between any two of its chunks."""
    async with stream:
        async for chunk in stream:
            into.append(chunk)
            await asyncio.sleep(0)
    return stream.completion


async def follow_up(
    world: Sweep, client: Client, prompt: str, counts: Counts, *, stream: bool = False
) -> tuple[Completion, list[StreamChunk]]:
    """The same request again after the round (as a stream read whole, with ``stream``):
    a hit with an answer produced before it when one is stored, else a miss with an
    answer of its own."""
    stored = await world.stored(client, await key_of(client, prompt))
    produced = {answer.id for answer in world.answers[prompt]}
    chunks: list[StreamChunk] = []
    if stream:
        streamed = await read(client.stream(**ask(prompt)), chunks)
        assert streamed is not None
        again, answer = streamed, world.streamed(prompt, chunks, whole=True)
        assert world.answered(prompt, again) is answer
    else:
        again = await client.complete(**ask(prompt))
        answer = world.answered(prompt, again)
    counts.saw(client, again)
    assert again.cache is (CacheStatus.HIT if stored else CacheStatus.MISS)
    assert (answer.id in produced) is stored
    world.allow(prompt, world.allowed[prompt] + (again.cache is CacheStatus.MISS))
    return again, chunks


# -- complete() --------------------------------------------------------------------------


@pytest.mark.parametrize("world", TIERS, indirect=True)
async def test_complete_cancelled_alone(world: Sweep) -> None:
    # A cold miss: its flight is cancelled with it, wherever it was; an answer that came
    # back and was stored first is the next call's hit.
    client = world.client()
    await warm(world, [client])

    async def play(n: int, k: int) -> bool:
        prompt = f"alone {n}.{k}"
        counts = Counts(world, [client])
        call = asyncio.create_task(client.complete(**ask(prompt)))
        finished = await cancel_after(call, k)
        await ended(call)
        if finished:
            assert call.result().cache is CacheStatus.MISS
            world.answered(prompt, call.result())
            counts.saw(client, call.result())
        else:
            assert call.cancelled()
        await world.nothing_left()
        if finished:
            assert world.requests(prompt) == 1
        elif world.requests(prompt):
            world.reached["cancelled, its request upstream"] += 1
        world.allow(prompt, 1)
        again, _ = await follow_up(world, client, prompt, counts)
        if finished:
            assert again.raw == call.result().raw
        elif again.cache is CacheStatus.HIT:
            world.reached["cancelled, its answer stored"] += 1
        counts.check(requests=world.requests(prompt), cancelled=not finished)
        return finished

    await sweep_until(
        world, play, "cancelled, its request upstream", "cancelled, its answer stored"
    )


@pytest.mark.parametrize("joins", ["at once", "in flight"])
@pytest.mark.parametrize("world", TIERS, indirect=True)
async def test_complete_leader_cancelled_under_its_follower(world: Sweep, joins: str) -> None:
    # Two identical calls on one Client, the first cancelled: the flight goes on for the
    # second, whichever of them started it. One upstream call, stored. Started at once,
    # a follower on a shared tier starts the flight itself (one caller reads the tier at
    # a time; the others go straight to the flight); started once the leader's request
    # is upstream, it joins the leader's flight.
    client = world.client()
    await warm(world, [client])
    ep = world.endpoint

    async def play(n: int, k: int) -> bool:
        prompt = f"follower {joins} {n}.{k}"
        counts = Counts(world, [client])
        if joins == "in flight":
            ep.hold_answers()
        leader = asyncio.create_task(client.complete(**ask(prompt)))
        if joins == "in flight":
            async with asyncio.timeout(LONG):
                await ep.wait_for_calls(ep.calls + 1)
        follower = asyncio.create_task(client.complete(**ask(prompt)))
        ep.release_answers()  # (held only for a follower joining in flight)
        finished = await cancel_after(leader, k)
        flying = world.requests(prompt) == 1  # the leader's request is upstream
        await ended(leader, follower)
        answer = world.answered(prompt, follower.result())
        counts.saw(client, follower.result())
        if finished:
            assert world.answered(prompt, leader.result()) is answer
            statuses = {leader.result().cache, follower.result().cache}
            assert statuses == {CacheStatus.MISS, CacheStatus.COALESCED}
            counts.saw(client, leader.result())
        else:
            assert leader.cancelled()
            # Its own flight, or the one the leader left: the answer is its own either
            # way, with what it cost (the leader's claim passes on).
            assert follower.result().cache is CacheStatus.MISS
            if flying:
                world.reached["cancelled, its flight left to the follower"] += 1
        await world.nothing_left()
        assert world.requests(prompt) == 1
        world.allow(prompt, 1)
        again, _ = await follow_up(world, client, prompt, counts)
        assert again.cache is CacheStatus.HIT and again.raw == follower.result().raw
        counts.check(requests=1, cancelled=not finished)
        return finished

    # At once on a shared tier, the follower may start the flight itself: nothing to reach.
    reachable = joins == "in flight" or world.tier == "memory"
    states = ["cancelled, its flight left to the follower"] if reachable else []
    await sweep_until(world, play, *states)


@pytest.mark.parametrize("world", SHARED_TIERS, indirect=True)
async def test_complete_cancelled_on_one_client_of_two(world: Sweep) -> None:
    # Two Clients on one shared tier (two processes, as far as the lease knows), the
    # first's caller cancelled: its lease is released, its answer shared if stored; the
    # other gets the answer, by its own upstream call at worst.
    a, b = world.client(), world.client()
    await warm(world, [a, b])

    async def play(n: int, k: int) -> bool:
        prompt = f"two clients {n}.{k}"
        counts = Counts(world, [a, b])
        leading = asyncio.create_task(a.complete(**ask(prompt)))
        other = asyncio.create_task(b.complete(**ask(prompt)))
        finished = await cancel_after(leading, k)
        await ended(leading, other)
        world.answered(prompt, other.result())
        counts.saw(b, other.result())
        if finished:
            world.answered(prompt, leading.result())
            counts.saw(a, leading.result())
            assert CacheStatus.MISS in {leading.result().cache, other.result().cache}
        else:
            assert leading.cancelled()
            world.reached[f"cancelled, the other {other.result().cache.value}"] += 1
        await world.nothing_left()
        assert world.requests(prompt) >= 1
        if world.requests(prompt) == 2:
            world.reached["cancelled, its request upstream, the other's too"] += 1
        world.allow(prompt, 1 if finished else 2)
        for client, call in ((a, leading), (b, other)):
            again, _ = await follow_up(world, client, prompt, counts)
            assert again.cache is CacheStatus.HIT
            if not call.cancelled():
                assert again.raw == call.result().raw
        counts.check(requests=world.requests(prompt), cancelled=not finished)
        return finished

    await sweep_until(
        world,
        play,
        "cancelled, the other miss",
        "cancelled, the other coalesced",
        "cancelled, its request upstream, the other's too",
    )


# -- stream() ----------------------------------------------------------------------------


@pytest.mark.parametrize("world", TIERS, indirect=True)
async def test_stream_reader_cancelled_alone(world: Sweep) -> None:
    # A lone reader cancelled mid-read: what it got is the answer's first chunks; its
    # upstream stream is cancelled with it, and stored only if it had ended.
    client = world.client()
    await warm(world, [client])

    async def play(n: int, k: int) -> bool:
        prompt = f"stream alone {n}.{k}"
        counts = Counts(world, [client])
        got: list[StreamChunk] = []
        reading = asyncio.create_task(read(client.stream(**ask(prompt)), got))
        finished = await cancel_after(reading, k)
        await ended(reading)
        world.streamed(prompt, got, whole=finished)
        if finished:
            completion = reading.result()
            assert completion is not None and completion.cache is CacheStatus.MISS
            world.answered(prompt, completion)
            counts.saw(client, completion)
        else:
            assert reading.cancelled()
            if got:
                world.reached["cancelled mid-read"] += 1
        await world.nothing_left()
        if finished:
            assert world.requests(prompt) == 1
        world.allow(prompt, 1)
        again, replayed = await follow_up(world, client, prompt, counts, stream=True)
        if finished:
            assert [chunk.raw for chunk in replayed] == [chunk.raw for chunk in got]
        elif again.cache is CacheStatus.HIT:
            world.reached["cancelled, its answer stored"] += 1
        counts.check(requests=world.requests(prompt), cancelled=not finished)
        return finished

    await sweep_until(world, play, "cancelled mid-read", "cancelled, its answer stored")


@pytest.mark.parametrize("world", TIERS, indirect=True)
async def test_stream_reader_cancelled_beside_a_whole_reader(world: Sweep) -> None:
    # Two readers of one stream, one cancelled mid-read: the other reads every chunk of
    # the one upstream stream (or, when it looked in the cache after that stream was
    # stored, its replay), which is stored and replayed alike.
    client = world.client()
    await warm(world, [client])

    async def play(n: int, k: int) -> bool:
        prompt = f"stream pair {n}.{k}"
        counts = Counts(world, [client])
        cut: list[StreamChunk] = []
        whole: list[StreamChunk] = []
        cancelled = asyncio.create_task(read(client.stream(**ask(prompt)), cut))
        reading = asyncio.create_task(read(client.stream(**ask(prompt)), whole))
        finished = await cancel_after(cancelled, k)
        await ended(cancelled, reading)
        answer = world.streamed(prompt, whole, whole=True)
        completion = reading.result()
        assert completion is not None
        assert world.answered(prompt, completion) is answer
        counts.saw(client, completion)
        assert [chunk.raw for chunk in cut] == [chunk.raw for chunk in whole][: len(cut)]
        if finished:
            other = cancelled.result()
            assert other is not None and len(cut) == len(whole)
            assert other.cache is CacheStatus.MISS or completion.cache is CacheStatus.MISS
            assert {other.cache, completion.cache} <= SHARED_STATUSES
            counts.saw(client, other)
        else:
            assert cancelled.cancelled()
            # The stream the other left is this reader's own (its claim passes on), or
            # stored, and replayed.
            assert completion.cache in (CacheStatus.MISS, CacheStatus.HIT)
            if cut:
                world.reached["cancelled mid-read"] += 1
                if completion.cache is CacheStatus.MISS:
                    world.reached["cancelled, its stream left to the other"] += 1
        await world.nothing_left()
        assert world.requests(prompt) == 1
        world.allow(prompt, 1)
        again, replayed = await follow_up(world, client, prompt, counts, stream=True)
        assert again.cache is CacheStatus.HIT
        assert [chunk.raw for chunk in replayed] == [chunk.raw for chunk in whole]
        counts.check(requests=1, cancelled=not finished)
        return finished

    await sweep_until(world, play, "cancelled mid-read", "cancelled, its stream left to the other")


# -- embed() -----------------------------------------------------------------------------


@pytest.mark.parametrize("world", TIERS, indirect=True)
async def test_embed_cancelled_beside_calls_sharing_its_inputs(world: Sweep) -> None:
    # A batch with a repeat, cancelled, while another call of its Client (and, on a
    # shared tier, one of another Client) asks for one of its inputs: the others get
    # every vector right; each input goes upstream once at most, and what was sent is
    # stored, whoever was still waiting for it.
    client = world.client()
    clients = [client] if world.shared is None else [client, world.client()]
    await warm(world, clients)

    async def play(n: int, k: int) -> bool:
        a, b, c, d, e = texts = [f"embed {n}.{k} {name}" for name in "abcde"]
        counts = Counts(world, clients)
        sent_before = len(world.embedded())
        batch = [a, b, a, c]
        cancelled = asyncio.create_task(client.embed(model=EMBED_MODEL, input=batch))
        # Each asks for c too: one call of the same Client, one of the other (if any).
        others = [(caller, [c, extra]) for caller, extra in zip(clients, (d, e), strict=False)]
        calls = [
            (caller, inputs, asyncio.create_task(caller.embed(model=EMBED_MODEL, input=inputs)))
            for caller, inputs in others
        ]
        finished = await cancel_after(cancelled, k)
        await ended(cancelled, *(call for _, _, call in calls))
        for caller, inputs, call in calls:
            world.vectors_right(inputs, call.result())
            counts.saw(caller, call.result())
        if finished:
            world.vectors_right(batch, cancelled.result())
            counts.saw(client, cancelled.result())
        else:
            assert cancelled.cancelled()
        await world.nothing_left()
        sent = world.embedded()[sent_before:]
        assert set(sent) <= set(texts)
        assert max(collections.Counter(sent).values()) == 1  # each once at most
        assert {text for _, inputs in others for text in inputs} <= set(sent)
        if finished:
            assert {a, b} <= set(sent)
        elif a in sent:
            world.reached["cancelled, its inputs sent"] += 1
        again = await client.embed(model=EMBED_MODEL, input=texts)
        counts.saw(client, again)
        world.vectors_right(texts, again)
        assert (again.hits, again.misses, again.coalesced) == (len(sent), 5 - len(sent), 0)
        counts.check(requests=0, cancelled=0)
        return finished

    await sweep_until(world, play, "cancelled, its inputs sent")

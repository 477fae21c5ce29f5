"""Client.stream against the FakeGateway: replay, fan-out, failures. Counts, never times."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    FlightConfig,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APIStreamError,
    InternalServerError,
    InvalidRequestError,
)
from limpet.http.chunks import StreamChunk
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.openai_shapes import assert_chat_completion, assert_chunks


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[Client]:
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as c:
        yield c


async def collect(stream: CompletionStream) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


def text(chunks: list[StreamChunk]) -> str:
    return "".join(chunk.content or "" for chunk in chunks)


async def test_a_replayed_stream_repeats_the_live_one(client: Client, gateway: FakeGateway) -> None:
    live_stream = client.stream(**ask())
    live = await collect(live_stream)
    replay_stream = client.stream(**ask())
    replayed = await collect(replay_stream)
    assert gateway.endpoint("a").calls == 1
    assert text(live) and text(replayed) == text(live)
    assert [c.delta for c in replayed] == [c.delta for c in live]
    assert [c.raw for c in replayed] == [c.raw for c in live]
    assert_chunks([c.raw for c in live])
    assert live_stream.completion is not None and replay_stream.completion is not None
    assert_chat_completion(live_stream.completion.raw)
    assert_chat_completion(replay_stream.completion.raw)
    assert live_stream.completion.cache is CacheStatus.MISS
    assert replay_stream.completion.cache is CacheStatus.HIT
    assert live_stream.completion.content == text(live)
    assert live_stream.completion.usage.completion_tokens > 0
    assert live_stream.completion.cost is not None and live_stream.completion.cost.usd > 0


async def test_stream_then_complete_is_one_upstream_call(
    client: Client, gateway: FakeGateway
) -> None:
    streamed = text(await collect(client.stream(**ask())))
    completed = await client.complete(**ask())
    assert completed.cache is CacheStatus.HIT
    assert completed.content == streamed
    assert gateway.endpoint("a").calls == 1


async def test_complete_then_stream_replays_the_completion(
    client: Client, gateway: FakeGateway
) -> None:
    completed = await client.complete(**ask())
    stream = client.stream(**ask())
    chunks = await collect(stream)
    assert_chunks([c.raw for c in chunks])
    assert text(chunks) == completed.content
    assert chunks[0].delta.get("role") == "assistant"
    assert chunks[-2].finish_reason == completed.finish_reason
    assert chunks[-1].raw["usage"] == completed.raw["usage"]
    assert stream.completion is not None and stream.completion.cache is CacheStatus.HIT
    assert gateway.endpoint("a").calls == 1


async def test_streamed_and_complete_usage_agree(client: Client, gateway: FakeGateway) -> None:
    stream = client.stream(**ask("usage check"))
    await collect(stream)
    completed = await client.complete(**ask("usage check"), cache="bypass")
    assert stream.completion is not None
    assert stream.completion.usage == completed.usage
    assert stream.completion.cost == completed.cost


async def test_a_hundred_identical_streams_share_one_upstream_stream(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    streams = [client.stream(**ask()) for _ in range(100)]
    tasks = [asyncio.create_task(collect(s)) for s in streams]
    await ep.wait_for_calls(1)
    ep.resume_stream()
    results = await asyncio.gather(*tasks)
    assert ep.calls == 1
    assert all([c.raw for c in r] == [c.raw for c in results[0]] for r in results)
    statuses = [s.completion.cache for s in streams if s.completion is not None]
    assert statuses.count(CacheStatus.MISS) == 1
    assert statuses.count(CacheStatus.COALESCED) == 99
    assert client.stats.coalesced == 99


async def joined(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Returns once ``condition`` holds: a second caller has joined the first's flight
    (how many loop turns its own lookups take varies; the flight's state says)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the second caller joined no flight within {turns} turns")


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("first", ["stream", "complete"])
async def test_a_stream_and_a_complete_of_one_request_make_one_upstream_call(
    gateway: FakeGateway, first: str, cached: bool
) -> None:
    """With a cache or without one (coalescing is on either way)."""
    options: dict[str, Any] = {} if cached else {"cache": None}
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1), **options) as c:
        own = CacheStatus.MISS if cached else CacheStatus.BYPASS
        await _one_upstream_call(c, gateway, first, own)


async def _one_upstream_call(
    client: Client, gateway: FakeGateway, first: str, own: CacheStatus
) -> None:
    ep = gateway.endpoint("a")
    ep.hold_answers()
    pipelines = client._pipelines
    streamed = client.stream(**ask())

    def start(which: str) -> asyncio.Task[Any]:
        asking = collect(streamed) if which == "stream" else client.complete(**ask())
        return asyncio.create_task(asking)

    tasks = {first: start(first)}
    await ep.wait_for_calls(1)
    second = "complete" if first == "stream" else "stream"
    tasks[second] = start(second)
    if first == "stream":  # complete() reads the running stream to its end
        flights = pipelines.stream_flights._flights
        await joined(lambda: any(f.readers == 2 for f in flights.values()))
    else:  # the stream's reader waits for complete()'s answer, then replays it
        answers = pipelines.chat._flight
        assert answers is not None
        await joined(lambda: any(len(f.waiters) == 2 for f in answers._flights.values()))
    ep.release_answers()
    chunks, answer = await tasks["stream"], await tasks["complete"]
    assert ep.calls == 1
    assert streamed.completion is not None
    text = "".join(chunk.content or "" for chunk in chunks)
    assert text == answer.content == streamed.completion.content
    completions = {"stream": streamed.completion, "complete": answer}
    assert completions[first].cache is own
    assert completions[second].cache is CacheStatus.COALESCED
    assert_chunks([chunk.raw for chunk in chunks])


@pytest.mark.parametrize("first", ["stream", "complete"])
async def test_a_mixed_storm_whose_shared_call_failed_retries_once_for_both_kinds(
    client: Client, gateway: FakeGateway, first: str
) -> None:
    ep = gateway.endpoint("a")
    ep.fail(500)  # the shared call fails retryably: its waiters may try once more
    ep.hold_answers()
    pipelines = client._pipelines

    async def completing() -> CacheStatus:
        return (await client.complete(**ask())).cache

    async def streaming() -> CacheStatus:
        stream = client.stream(**ask())
        await collect(stream)
        assert stream.completion is not None
        return stream.completion.cache

    kinds = [completing, streaming] if first == "complete" else [streaming, completing]
    leader = asyncio.create_task(kinds[0]())
    await ep.wait_for_calls(1)
    others = [asyncio.create_task(kind()) for kind in (kinds * 5)[1:]]
    answers, streams = pipelines.chat._flight, pipelines.stream_flights._flights
    assert answers is not None

    def all_joined() -> bool:
        chat = sum(len(f.waiters) for f in answers._flights.values())
        return chat + sum(f.readers for f in streams.values()) == 10

    await joined(all_joined)
    ep.release_answers()
    with pytest.raises(InternalServerError):
        await leader  # the leader of the failed call gets its error
    results = await asyncio.gather(*others)
    assert sorted(results) == sorted([CacheStatus.MISS] + [CacheStatus.COALESCED] * 8)
    assert ep.calls == 2  # the failed call, then one retry for complete() and stream() alike


async def test_a_complete_that_joined_a_stream_cut_short_gets_a_whole_answer_of_its_own(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=2)
    ep.hold_answers()
    streamed = client.stream(**ask())
    streaming = asyncio.create_task(collect(streamed))
    await ep.wait_for_calls(1)
    completing = asyncio.create_task(client.complete(**ask()))
    flights = client._pipelines.stream_flights._flights
    await joined(lambda: any(f.readers == 2 for f in flights.values()))
    ep.release_answers()
    await streaming
    answer = await completing
    assert streamed.completion is not None and streamed.completion.finish_reason is None
    assert answer.finish_reason == "stop" and answer.cache is CacheStatus.MISS
    assert ep.calls == 2  # the cut stream, then complete()'s own call


async def test_a_late_joiner_gets_the_chunks_so_far_then_the_tail(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=4)
    first = client.stream(**ask())
    seen = [await anext(first) for _ in range(4)]  # the stream is now held upstream
    late = asyncio.create_task(collect(client.stream(**ask())))
    ep.resume_stream()
    rest = await collect(first)
    assert [c.raw for c in await late] == [c.raw for c in seen + rest]
    assert ep.calls == 1


async def test_a_joiner_is_coalesced_as_the_stream_stands_until_its_leader_leaves(
    client: Client, gateway: FakeGateway
) -> None:
    # What a proxy tells a caller a chunk cost, before the stream's end says how it was
    # served: a joiner is coalesced while the reader who started the stream reads on;
    # once that one left, the answer may be the joiner's own, known at the end.
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    leader = client.stream(**ask())
    await anext(leader)
    follower = client.stream(**ask())
    await anext(follower)  # it has joined the leader's upstream stream
    assert (leader.coalesced, follower.coalesced) == (False, True)
    await leader.aclose()
    ep.resume_stream()
    await anext(follower)
    assert follower.coalesced is False
    await collect(follower)
    assert follower.completion is not None and follower.completion.cache is CacheStatus.MISS


async def test_cancelling_a_follower_never_stops_the_others(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    tasks = [asyncio.create_task(collect(client.stream(**ask()))) for _ in range(5)]
    await ep.wait_for_calls(1)
    tasks[3].cancel()
    ep.resume_stream()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    finished = [r for r in results if isinstance(r, list)]
    assert len(finished) == 4 and len({text(r) for r in finished}) == 1


async def test_a_leader_that_stops_reading_does_not_stop_the_followers(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    leader = client.stream(**ask())
    await anext(leader)
    follower = client.stream(**ask())
    first = await anext(follower)  # it has joined the leader's upstream stream
    await leader.aclose()
    ep.resume_stream()
    chunks = [first, *await collect(follower)]
    assert text(chunks)
    assert ep.calls == 1
    assert (await client.complete(**ask())).cache is CacheStatus.HIT  # stored in full


async def test_when_every_reader_leaves_the_upstream_stream_is_dropped_and_not_cached(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    async with client.stream(**ask()) as stream:
        await anext(stream)
    ep.resume_stream()
    assert stream.completion is None
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_streams_of_a_client_that_does_not_coalesce_each_go_upstream(
    gateway: FakeGateway,
) -> None:
    """coalesce=False means no sharing for streams too, as for complete(): each stream is
    its own upstream call; the answer is still cached and replayed afterwards."""
    ep = gateway.endpoint("a")
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(endpoints=[endpoint], coalesce=False) as client:
        ep.pause_stream(after_chunks=1)
        streams = [client.stream(**ask()) for _ in range(3)]
        tasks = [asyncio.create_task(collect(s)) for s in streams]
        await ep.wait_for_calls(3)
        ep.resume_stream()
        await asyncio.gather(*tasks)
        assert ep.calls == 3
        assert [s.completion.cache for s in streams if s.completion] == [CacheStatus.MISS] * 3
        replay = client.stream(**ask())
        await collect(replay)
        assert replay.completion is not None and replay.completion.cache is CacheStatus.HIT
        assert ep.calls == 3


@pytest.mark.parametrize("fault", ["stream_error", "drop_connection"])
async def test_a_failure_mid_stream_reaches_every_reader_and_nothing_is_cached(
    client: Client, gateway: FakeGateway, fault: str
) -> None:
    ep = gateway.endpoint("a")
    if fault == "stream_error":
        ep.stream_error(after_chunks=2)
        expected: type[Exception] = APIStreamError
    else:
        ep.drop_connection(after_chunks=2)
        expected = APIConnectionError
    ep.pause_stream(after_chunks=1)
    tasks = [asyncio.create_task(collect(client.stream(**ask()))) for _ in range(10)]
    await ep.wait_for_calls(1)
    ep.resume_stream()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, expected) for r in results), results
    assert ep.calls == 1
    again = client.stream(**ask())
    await collect(again)
    assert again.completion is not None and again.completion.cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_sampled_streams_are_neither_cached_nor_shared(
    client: Client, gateway: FakeGateway
) -> None:
    streams = [client.stream(**ask(temperature=0.9)) for _ in range(3)]
    await asyncio.gather(*(collect(s) for s in streams))
    assert gateway.endpoint("a").calls == 3
    assert {s.completion.cache for s in streams if s.completion} == {CacheStatus.BYPASS}


async def test_bad_input_raises_when_stream_is_called(client: Client, gateway: FakeGateway) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.stream(**ask(), max_tokens=0)
    assert info.value.field == "max_tokens"
    assert gateway.total_calls == 0


async def test_nothing_is_sent_until_the_first_chunk_is_asked_for(
    client: Client, gateway: FakeGateway
) -> None:
    client.stream(**ask())
    await client.complete(**ask("something else"))
    assert gateway.endpoint("a").calls == 1


@pytest.mark.redis
async def test_streams_in_two_processes_share_one_upstream_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.2

    def make() -> Client:
        cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
        return Client(
            endpoints=[Endpoint("a", gateway.base_url("a"))],
            cache=cache,
            flight=FlightConfig(lease=0.5, poll=0.05),
        )

    async with make() as a, make() as b:
        sa, sb = a.stream(**ask()), b.stream(**ask())
        ta, tb = await asyncio.gather(collect(sa), collect(sb))
    assert ep.calls == 1
    assert text(ta) == text(tb)
    assert_chunks(raws(ta) + raws(tb))
    assert sa.completion is not None and sb.completion is not None
    assert_chat_completion(sa.completion.raw)
    assert_chat_completion(sb.completion.raw)
    assert sorted([sa.completion.cache.value, sb.completion.cache.value]) == ["coalesced", "miss"]


# --- what a stream serves is what the live call would have -------------------------------


def raws(chunks: list[StreamChunk]) -> list[dict[str, Any]]:
    return [chunk.raw for chunk in chunks]


def by_choice(chunks: list[StreamChunk]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.raw["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    return texts


def comparable(raw: dict[str, Any]) -> dict[str, Any]:
    """What two calls for one request share: everything but the generation's id and time."""
    return {k: v for k, v in raw.items() if k not in ("id", "created")}


async def test_n_choices_are_streamed_cached_and_replayed_whole(
    client: Client, gateway: FakeGateway
) -> None:
    live_stream = client.stream(**ask(n=3))
    live = await collect(live_stream)
    assert_chunks(raws(live))
    assert live_stream.completion is not None
    assembled = assert_chat_completion(live_stream.completion.raw)
    assert [c.message.content for c in assembled.choices] == list(by_choice(live).values())
    assert len(set(by_choice(live).values())) == 3
    hit = await client.complete(**ask(n=3))
    assert hit.cache is CacheStatus.HIT
    fresh = await client.complete(**ask(n=3), cache="bypass")
    assert comparable(assert_chat_completion(hit.raw).model_dump()) == comparable(
        assert_chat_completion(fresh.raw).model_dump()
    )
    replay_stream = client.stream(**ask(n=3))
    replayed = await collect(replay_stream)
    assert raws(replayed) == raws(live)
    assert gateway.endpoint("a").calls == 2  # the stream, and the bypassed call


async def test_a_completed_n_answer_replays_every_choice(
    client: Client, gateway: FakeGateway
) -> None:
    completed = await client.complete(**ask(n=2, logprobs=True))
    stream = client.stream(**ask(n=2, logprobs=True))
    chunks = await collect(stream)
    assert_chunks(raws(chunks))
    contents = [choice["message"]["content"] for choice in completed.raw["choices"]]
    assert by_choice(chunks) == dict(enumerate(contents))
    assert stream.completion is not None and stream.completion.cache is CacheStatus.HIT
    assert gateway.endpoint("a").calls == 1


async def test_logprobs_of_a_stream_are_served_by_a_later_complete(
    client: Client, gateway: FakeGateway
) -> None:
    await collect(client.stream(**ask(logprobs=True, top_logprobs=2)))
    hit = await client.complete(**ask(logprobs=True, top_logprobs=2))
    live = await client.complete(**ask(logprobs=True, top_logprobs=2), cache="bypass")
    assert hit.cache is CacheStatus.HIT
    assert hit.raw["choices"][0]["logprobs"] is not None
    assert hit.raw["choices"] == live.raw["choices"]
    assert_chat_completion(hit.raw)


async def test_a_stream_asks_for_usage_and_records_it(client: Client, gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    assert not ep.always_stream_usage  # OpenAI's rule: usage only when asked for
    stream = client.stream(**ask("usage, please"))
    chunks = await collect(stream)
    assert ep.last_request is not None
    assert ep.last_request["stream_options"] == {"include_usage": True}
    assert chunks[-1].raw["choices"] == [] and chunks[-1].raw["usage"]
    assert stream.completion is not None
    assert stream.completion.usage.completion_tokens > 0
    assert stream.completion.cost is not None and stream.completion.cost.usd > 0
    hit = await client.complete(**ask("usage, please"))
    assert hit.cache is CacheStatus.HIT and hit.usage == stream.completion.usage
    assert client.stats.cost_usd > 0


async def test_usage_declined_by_a_caller_is_still_asked_for_and_stored_for_the_others(
    client: Client, gateway: FakeGateway
) -> None:
    declined = client.stream(**ask(stream_options={"include_usage": False}))
    chunks = await collect(declined)
    sent = gateway.endpoint("a").last_request
    assert sent is not None and sent["stream_options"] == {"include_usage": True}
    assert all("usage" not in c.raw for c in chunks)  # not its usage chunk, nor a null
    assert declined.completion is not None and declined.completion.usage.reported
    again = client.stream(**ask())
    replayed = await collect(again)
    assert again.completion is not None and again.completion.cache is CacheStatus.HIT
    assert replayed[-1].raw["choices"] == [] and replayed[-1].raw["usage"]
    hit = await client.complete(**ask())
    assert hit.cache is CacheStatus.HIT and hit.raw["usage"] and hit.usage.reported
    assert hit.cost is not None and hit.cost.saved_usd > 0
    declined_again = await collect(client.stream(**ask(stream_options={"include_usage": False})))
    assert [c.raw for c in declined_again] == [c.raw for c in chunks]
    assert gateway.endpoint("a").calls == 1


async def test_readers_of_one_stream_each_get_usage_as_they_asked(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    declined = client.stream(**ask(stream_options={"include_usage": False}))
    first = await anext(declined)  # it leads the upstream stream, now held
    follower = asyncio.create_task(collect(client.stream(**ask())))
    ep.resume_stream()
    led = [first, *await collect(declined)]
    followed = await follower
    assert ep.calls == 1
    assert followed[-1].raw["choices"] == [] and followed[-1].raw["usage"]
    assert [c.raw for c in led] == [c.raw for c in followed[:-1]]


async def test_coalesced_streams_of_n_choices_each_get_the_whole(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=3)
    streams = [client.stream(**ask(n=2, logprobs=True)) for _ in range(3)]
    tasks = [asyncio.create_task(collect(s)) for s in streams]
    await ep.wait_for_calls(1)
    ep.resume_stream()
    results = await asyncio.gather(*tasks)
    assert ep.calls == 1
    assert all(raws(r) == raws(results[0]) for r in results)
    assert_chunks(raws(results[0]))
    completions = [s.completion for s in streams if s.completion is not None]
    assert sorted(c.cache.value for c in completions) == ["coalesced", "coalesced", "miss"]
    for completion in completions:
        assert_chat_completion(completion.raw)
        assert completion.raw["choices"] == completions[0].raw["choices"]
        assert len(completion.raw["choices"]) == 2


async def test_a_bypassed_stream_still_completes_whole(
    client: Client, gateway: FakeGateway
) -> None:
    stream = client.stream(**ask("big answer"), cache="bypass")
    chunks = await collect(stream)
    assert text(chunks)
    completion = stream.completion
    assert completion is not None and completion.cache is CacheStatus.BYPASS
    assert completion.content == text(chunks)
    assert completion.finish_reason == "stop"
    assert completion.usage.completion_tokens > 0
    assert completion.cost is not None and completion.cost.usd > 0
    assert_chat_completion(completion.raw)


async def test_an_openrouter_like_endpoint_that_always_sends_usage(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").always_stream_usage = True
    stream = client.stream(**ask(stream_options={"include_usage": False}))
    await collect(stream)
    assert stream.completion is not None and stream.completion.usage.completion_tokens > 0


# --- a reader's chunks are its own --------------------------------------------------------


def deface(chunk: StreamChunk) -> None:
    """What a caller may do to a chunk it got: change it in place."""
    for choice in chunk.raw.get("choices") or ():
        choice["delta"]["content"] = "DEFACED"
    if chunk.raw.get("usage"):
        chunk.raw["usage"]["prompt_tokens"] = -1


async def test_a_reader_changing_its_chunks_changes_no_other_readers_nor_the_stored_replay(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=4)
    leader = client.stream(**ask())
    for _ in range(3):
        deface(await anext(leader))
    late = asyncio.create_task(collect(client.stream(**ask())))  # gets the chunks so far
    ep.resume_stream()
    async for chunk in leader:
        deface(chunk)
    assert leader.completion is not None
    whole = leader.completion.content
    assert whole and "DEFACED" not in whole
    assert text(await late) == whole
    replay = client.stream(**ask())
    replayed = await collect(replay)
    assert replay.completion is not None and replay.completion.cache is CacheStatus.HIT
    assert text(replayed) == whole
    assert replayed[-1].raw["usage"] == leader.completion.raw["usage"]
    assert ep.calls == 1


async def test_a_reader_changing_a_replayed_completion_leaves_the_cached_entry_whole(
    client: Client, gateway: FakeGateway
) -> None:
    completed = await client.complete(**ask(n=2))
    async for chunk in client.stream(**ask(n=2)):  # replayed from the completion's entry
        deface(chunk)
    again = await client.complete(**ask(n=2))
    assert again.cache is CacheStatus.HIT
    assert again.raw == completed.raw
    assert by_choice(await collect(client.stream(**ask(n=2)))) == {
        choice["index"]: choice["message"]["content"] for choice in completed.raw["choices"]
    }
    assert gateway.endpoint("a").calls == 1


@pytest.mark.parametrize("fault", ["stream_error", "status"])
async def test_a_stream_retried_the_moment_it_failed_goes_upstream_again(
    client: Client, gateway: FakeGateway, fault: str
) -> None:
    ep = gateway.endpoint("a")
    if fault == "stream_error":
        ep.stream_error(after_chunks=2)
    else:
        ep.fail(503)
    with pytest.raises((APIStreamError, APIStatusError)):
        await collect(client.stream(**ask()))
    # Straight on, in the step the failure reached the reader: the failed flight is over,
    # so the retry is a call of its own, never handed the failure it retries.
    again = client.stream(**ask())
    assert text(await collect(again))
    assert again.completion is not None and again.completion.cache is CacheStatus.MISS
    assert ep.calls == 2


# --- a stream that ends with [DONE] before it is whole is never stored ---------------------


async def test_a_stream_ended_early_reaches_its_readers_as_it_came_and_is_never_stored(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=2)
    ep.pause_stream(after_chunks=1)
    streams = [client.stream(**ask()) for _ in range(3)]
    tasks = [asyncio.create_task(collect(s)) for s in streams]
    await ep.wait_for_calls(1)
    ep.resume_stream()
    results = await asyncio.gather(*tasks)
    assert all(raws(r) == raws(results[0]) for r in results)
    assert text(results[0]) and all(c.finish_reason is None for c in results[0])
    for stream in streams:
        assert stream.completion is not None and stream.completion.finish_reason is None
        assert stream.completion.content == text(results[0])
    assert ep.calls == 1
    completed = await client.complete(**ask())  # not a hit of the cut answer
    assert completed.cache is CacheStatus.MISS and completed.finish_reason == "stop"
    assert completed.content is not None and len(completed.content) > len(text(results[0]))
    again = client.stream(**ask())
    await collect(again)
    assert again.completion is not None and again.completion.cache is CacheStatus.HIT
    assert ep.calls == 2


async def test_a_stream_of_n_choices_ended_early_is_never_stored(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=3)
    stream = client.stream(**ask(n=2))
    assert by_choice(await collect(stream))
    assert stream.completion is not None
    assert [c["finish_reason"] for c in stream.completion.raw["choices"]] == [None, None]
    assert (await client.complete(**ask(n=2))).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_a_stream_of_no_chunk_at_all_is_an_error_for_every_reader(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=None)
    ep.hold_answers()
    streams = [client.stream(**ask()) for _ in range(5)]
    tasks = [asyncio.create_task(collect(s)) for s in streams]
    await ep.wait_for_calls(1)
    ep.release_answers()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, APIResponseError) for r in results), results
    assert all(s.completion is None for s in streams)
    assert ep.calls == 1
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


@pytest.mark.redis
async def test_a_stream_ended_early_is_stored_in_no_tier_for_no_process(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def make() -> Client:
        cache = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
        return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache)

    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=2)
    async with make() as a, make() as b:
        await collect(a.stream(**ask()))
        assert (await b.complete(**ask())).cache is CacheStatus.MISS
        assert (await a.complete(**ask())).cache is CacheStatus.HIT  # b's whole answer
    assert ep.calls == 2


@pytest.mark.parametrize("cancelled_before", [False, True])
async def test_aclose_from_another_task_ends_the_readers_loop(
    client: Client, gateway: FakeGateway, cancelled_before: bool
) -> None:
    # Regression: a stop button (aclose() from another task while the reader waits for
    # a chunk) raised RuntimeError("aclose(): asynchronous generator is already
    # running"), and the stream ran on to its end; and a reader whose task had been
    # cancelled once before (and went on) was taken for cancelled again.
    endpoint = gateway.endpoint("a")
    endpoint.pause_stream(after_chunks=1)
    stream = client.stream(**ask("stop button"))
    first = asyncio.Event()
    read: list[StreamChunk] = []

    async def reader() -> None:
        if cancelled_before:  # a cancellation this reader caught and went on from
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        async for chunk in stream:
            read.append(chunk)
            first.set()

    reading = asyncio.create_task(reader())
    await first.wait()
    await stream.aclose()  # the reader waits for its next chunk meanwhile
    await reading  # its loop ended: no error
    assert len(read) == 1 and stream.completion is None
    await stream.aclose()  # idempotent
    endpoint.resume_stream()
    assert (await client.complete(**ask("after"))).content  # the Client goes on

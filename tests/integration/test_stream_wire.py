"""Streams of wire shapes the FakeGateway does not send, from a scripted upstream over
loopback: what is served later (replayed, assembled) is what the live stream was."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from limpet import (
    CacheStatus,
    Client,
    Completion,
    Endpoint,
    MemcachedCache,
    MemoryCache,
    RetryConfig,
    TieredCache,
)
from limpet.errors import APIConnectionError, APIResponseError
from limpet.http.stream_events import stream_events
from limpet.pipeline.stream_flights import TAIL_GRACE
from tests.integration.chat import ask
from tests.integration.scripted import (
    ScriptedUpstream,
    chunk,
    completion,
    raw_event,
    scripted_upstream,
    usage_chunk,
)
from tests.loopback import served


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        yield scripted


async def test_an_event_past_the_cap_is_a_malformed_answer(upstream: ScriptedUpstream) -> None:
    upstream.script = [chunk({"content": "fine"}), chunk({"content": "x" * 4096})]
    endpoint = Endpoint("a", upstream.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{upstream.url}/chat/completions", json={"stream": True}) as response,
    ):
        with pytest.raises(APIResponseError, match="max_event_bytes") as info:
            async for _ in stream_events(response, endpoint, max_event_bytes=1024):
                pass
    assert info.value.endpoint == "a"


async def collect(client: Client, **params: Any) -> tuple[list[dict[str, Any]], Completion]:
    stream = client.stream(**ask(), **params)
    chunks = [c.raw async for c in stream]
    assert stream.completion is not None
    return chunks, stream.completion


def open_client(upstream: ScriptedUpstream) -> Client:
    return Client(endpoints=[Endpoint("a", upstream.url)], retry=RetryConfig(max_attempts=1))


async def test_a_replay_carries_the_envelope_fields_of_each_live_chunk_alone(
    upstream: ScriptedUpstream,
) -> None:
    first = {**chunk({"role": "assistant", "content": ""}), "system_fingerprint": "fp_1"}
    upstream.script = [
        first,
        {**chunk({"content": "Hi"}), "obfuscation": "abc"},
        chunk({}, "stop"),
        usage_chunk(),
    ]
    async with open_client(upstream) as client:
        live, _ = await collect(client)
        replayed, completion = await collect(client)
        hit = await client.complete(**ask())
    assert completion.cache is CacheStatus.HIT
    assert replayed == live == upstream.script
    assert "obfuscation" not in hit.raw and hit.content == "Hi"
    assert upstream.calls == 1


# --- whole or never stored ----------------------------------------------------------------

TOOL_CALL = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("script", "n"),
    [
        (  # n=2, and choice 1 never streamed
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Only one"}),
                chunk({}, "stop"),
                usage_chunk(),
            ],
            2,
        ),
        (  # the tool call's arguments cut off, no finish
            [
                chunk({"role": "assistant", "content": None}),
                chunk(
                    {
                        "tool_calls": [
                            {**TOOL_CALL, "function": {"name": "f", "arguments": '{"a": '}}
                        ]
                    }
                ),
            ],
            1,
        ),
        ([chunk({"role": "assistant", "content": ""}), chunk({"content": "The answer is"})], 1),
        ([usage_chunk()], 1),  # usage, and no choice at all
    ],
    ids=["choice-never-streamed", "tool-call-cut", "no-finish", "no-choice"],
)
async def test_a_stream_that_ends_before_it_is_whole_is_never_stored(
    upstream: ScriptedUpstream, script: list[dict[str, Any]], n: int
) -> None:
    upstream.script = list(script)
    async with open_client(upstream) as client:
        for _ in range(2):
            stream = client.stream(**ask(n=n))
            try:
                assert [c.raw async for c in stream] == script
            except APIResponseError:
                assert not any(c["choices"] for c in script)  # only a stream of no choice
        assert upstream.calls == 2
        assert (await client.complete(**ask(n=n))).cache is CacheStatus.MISS


async def test_a_stream_of_more_choices_than_the_request_asked_is_whole_only_when_all_end(
    upstream: ScriptedUpstream,
) -> None:
    # An endpoint's extra_body asks for n=2, the request for none. Regression: the
    # stream was whole once choice 0 ended, and choice 1, cut short, was stored and
    # replayed (and served to complete()) as a hit, here and in every other process.
    upstream.script = [
        chunk({"role": "assistant", "content": "Hel"}),
        chunk({"role": "assistant", "content": "Bon"}, index=1),
        chunk({"content": "lo"}, "stop"),
        chunk({"content": "jo"}, index=1),  # never finishes
    ]
    endpoint = Endpoint("a", upstream.url, extra_body={"n": 2})
    async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as client:
        for _ in range(2):
            stream = client.stream(**ask())
            assert [c.raw async for c in stream] == upstream.script
            assert stream.completion is not None
            assert stream.completion.cache is CacheStatus.MISS
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert [body.get("n") for body in upstream.bodies] == [2, 2, 2]


def one_choice(finish: str | None = "stop") -> dict[str, Any]:
    """A plain answer of choice 0 alone (a provider that ignores ``n``)."""
    answer = completion(1)
    answer["choices"][0]["finish_reason"] = finish
    return answer


@pytest.mark.parametrize(
    ("answer", "n", "extra_body"),
    [
        (one_choice(), 3, None),  # n ignored
        (one_choice(), None, {"n": 2}),  # the endpoint's n, ignored
        (one_choice(None), None, None),  # unfinished
        ({**completion(2), "choices": completion(2)["choices"][1:]}, 2, None),  # 0 missing
    ],
)
async def test_a_plain_answer_missing_a_choice_asked_for_is_served_never_stored(
    upstream: ScriptedUpstream,
    answer: dict[str, Any],
    n: int | None,
    extra_body: dict[str, Any] | None,
) -> None:
    # Regression: the stream of such an answer was never stored, the same answer as JSON
    # was, and then served to complete() and replayed to stream() readers as whole.
    upstream.plain = answer
    upstream.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
    endpoint = Endpoint("a", upstream.url, extra_body=extra_body)
    request = ask() if n is None else ask(n=n)
    async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as client:
        for _ in range(2):
            completed = await client.complete(**request)
            assert (completed.cache, completed.raw) == (CacheStatus.MISS, answer)
        stream = client.stream(**request)
        assert [c async for c in stream]
        assert stream.completion is not None and stream.completion.cache is CacheStatus.MISS
    assert upstream.calls == 3


async def test_a_plain_answer_of_every_choice_asked_for_is_stored(
    upstream: ScriptedUpstream,
) -> None:
    async with open_client(upstream) as client:
        assert (await client.complete(**ask(n=2))).cache is CacheStatus.MISS
        assert (await client.complete(**ask(n=2))).cache is CacheStatus.HIT
    assert upstream.calls == 1


async def test_a_reader_closing_early_where_every_chunk_has_usage_leaves_no_answer(
    upstream: ScriptedUpstream,
) -> None:
    # vLLM's continuous usage stats put usage on every chunk. Regression: a reader that
    # broke after the first chunk was taken for one that had the whole answer: its close
    # waited for the stream's end, and the answer was counted as its own.
    usage = usage_chunk()["usage"]
    upstream.script = [
        {**chunk({"role": "assistant", "content": "A"}), "usage": usage},
        {**chunk({"content": "B"}), "usage": usage},
        {**chunk({"content": "C"}, "stop"), "usage": usage},
    ]
    async with open_client(upstream) as client:
        stream = client.stream(**ask())
        async with stream:
            async for _ in stream:
                break
        assert stream.completion is None
        assert (client.stats.cancelled, client.stats.misses) == (1, 0)


async def test_a_stream_of_no_chunk_is_a_malformed_answer(upstream: ScriptedUpstream) -> None:
    async with open_client(upstream) as client:
        stream = client.stream(**ask())
        with pytest.raises(APIResponseError, match="without any choice"):
            [c async for c in stream]
        assert stream.completion is None


async def test_a_stream_whose_choices_all_finished_is_stored(upstream: ScriptedUpstream) -> None:
    """Ollama's ``finish_reason: ""`` before its last chunk is no finish, and no bar to
    storing once the last one says ``stop``."""
    upstream.script = [
        chunk({"role": "assistant", "content": "Hi"}, ""),
        chunk({"content": "!"}, ""),
        chunk({}, "stop"),
    ]
    async with open_client(upstream) as client:
        live, _ = await collect(client)
        replayed, completion = await collect(client)
    assert completion.cache is CacheStatus.HIT and replayed == live
    assert upstream.calls == 1


def long_stream(tokens: int) -> list[dict[str, Any]]:
    """A stream of one token a chunk: its chunking is many times its answer."""
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": f"t{i % 10} "}) for i in range(tokens)),
        chunk({}, "stop"),
        usage_chunk(),
    ]


async def read_text(stream: Any) -> tuple[str, CacheStatus]:
    text = "".join(
        [
            c.raw["choices"][0]["delta"].get("content") or ""
            async for c in stream
            if c.raw["choices"]
        ]
    )
    assert stream.completion is not None
    return text, stream.completion.cache


@pytest.mark.memcached
async def test_a_long_stream_too_big_with_its_chunking_is_kept_without_it(
    upstream: ScriptedUpstream, memcached_url: str, memcached_prefix: str
) -> None:
    # Regression: 2,000 token-sized deltas make a 6 KB answer and a chunking twenty times
    # that: the entry went over the tiers' limits and was never stored, streamed again
    # at full price each time (while the same answer as JSON was stored).
    upstream.script = [*long_stream(2_000)]

    def client() -> Client:
        shared = MemcachedCache.from_url(
            memcached_url, prefix=memcached_prefix, max_value_size=64 * 1024
        )
        return Client(
            endpoints=[Endpoint("a", upstream.url)],
            cache=TieredCache(MemoryCache(), shared),
            retry=RetryConfig(max_attempts=1),
        )

    async with client() as first, client() as other:
        text, status = await read_text(first.stream(**ask()))
        assert status is CacheStatus.MISS and len(text) == 6_000
        assert first.cache is not None
        await first.cache.flush()
        assert await read_text(first.stream(**ask())) == (text, CacheStatus.HIT)
        assert await read_text(other.stream(**ask())) == (text, CacheStatus.HIT)  # Memcached
        assert (await other.complete(**ask())).content == text
    assert upstream.calls == 1


def held_graces(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], object]]:
    """The ends of the streams' tail graces (``TAIL_GRACE``), held for the test to run
    when it says, instead of by the clock."""
    loop = asyncio.get_running_loop()
    graces: list[Callable[[], object]] = []
    later = loop.call_later

    def call_later(delay: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if delay != TAIL_GRACE:
            return later(delay, callback, *args, **kwargs)
        graces.append(partial(callback, *args))
        return later(3600.0, lambda: None)

    monkeypatch.setattr(loop, "call_later", call_later)
    return graces


@contextlib.asynccontextmanager
async def left_in_its_tail(
    upstream: ScriptedUpstream,
) -> AsyncIterator[tuple[Client, asyncio.Event]]:
    """A Client whose only reader of a stream left it, cancelled, with every choice
    finished and the usage in: only ``[DONE]`` to come, once the event is set."""
    upstream.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
    done = upstream.before_done = asyncio.Event()
    async with open_client(upstream) as client:
        await read_to_the_usage_then_cancel(client)
        yield client, done


async def read_to_the_usage_then_cancel(client: Client) -> None:
    """A reader of ``ask()``'s stream, cancelled once it has the usage chunk: with every
    choice finished, only ``[DONE]`` is left to come."""
    usage_seen = asyncio.Event()

    async def read() -> None:
        async with client.stream(**ask()) as stream:
            async for piece in stream:
                if piece.raw.get("usage"):
                    usage_seen.set()

    reader = asyncio.create_task(read())
    await usage_seen.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_a_stream_whose_reader_left_with_all_of_the_answer_is_kept_and_paid(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: cancelled after the usage chunk, with only [DONE] to come, the reader
    # took the upstream stream down with it: neither stored nor accounted, and the next
    # identical call paid for it again.
    async with left_in_its_tail(upstream) as (client, done):
        done.set()
        # Joins the stream as it ends (taking the claim its leader left: a miss) or
        # reads its entry; either way, no second upstream call.
        assert (await client.complete(**ask())).content == "Hi"
        assert client.stats.completion_tokens == 2
        assert (await client.complete(**ask())).cache is CacheStatus.HIT
    assert upstream.calls == 1


async def test_a_stream_let_end_is_not_cut_under_a_reader_that_joined_it(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the grace given a stream whose last reader left with all of the answer
    # in ran out under a newcomer that had joined it: CancelledError for a caller nobody
    # cancelled, and the answer paid for was not stored.
    graces = held_graces(monkeypatch)
    async with left_in_its_tail(upstream) as (client, done):
        async with client.stream(**ask()) as newcomer:
            chunks = [await anext(newcomer)]  # joined the stream let end
            assert len(graces) == 1
            graces[0]()  # the grace runs out while it reads
            done.set()
            chunks += [piece async for piece in newcomer]
        assert newcomer.completion is not None and newcomer.completion.content == "Hi"
    assert upstream.calls == 1


async def test_a_stream_closed_by_another_task_between_chunks_ends_the_readers_loop(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: closed while its reader handled the chunk that finished the answer,
    # the stream's close waited for its end, and the reader's next step ran into the
    # closing generator: RuntimeError("anext(): asynchronous generator is already running").
    upstream.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
    upstream.before_done = asyncio.Event()
    finished, handled = asyncio.Event(), asyncio.Event()
    async with open_client(upstream) as client:
        stream = client.stream(**ask())

        async def read() -> int:
            count = 0
            async for _ in stream:
                count += 1
                if count == 1:
                    finished.set()
                    await handled.wait()  # the app busy with the chunk
            return count

        reader = asyncio.create_task(read())
        await finished.wait()
        closer = asyncio.create_task(stream.aclose())  # the stop button
        await asyncio.sleep(0)  # one turn: the close starts, and waits for the end
        handled.set()
        upstream.before_done.set()
        assert await reader == 1
        await closer
        assert (await client.complete(**ask())).cache is CacheStatus.HIT  # let end, stored
    assert upstream.calls == 1


async def test_a_stream_closed_before_its_first_read_sends_nothing(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: aclose() before the reader's first step did nothing, and the read that
    # followed opened the upstream stream all the same.
    upstream.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
    async with open_client(upstream) as client:
        stream = client.stream(**ask())
        await stream.aclose()
        assert [piece async for piece in stream] == []
    assert upstream.calls == 0


async def test_a_long_stream_over_an_in_process_tiers_bytes_is_kept_without_chunking(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: the room every tier keeps ignored MemoryCache.max_bytes: the entry
    # with its chunking went over it, was refused without a count, and paid for again.
    upstream.script = [*long_stream(2_000)]
    memory = MemoryCache(max_bytes=64 * 1024)
    async with Client(
        endpoints=[Endpoint("a", upstream.url)], cache=memory, retry=RetryConfig(max_attempts=1)
    ) as client:
        text, status = await read_text(client.stream(**ask()))
        assert status is CacheStatus.MISS
        assert await read_text(client.stream(**ask())) == (text, CacheStatus.HIT)
    assert upstream.calls == 1


async def test_choices_a_server_numbers_not_are_told_apart_by_position(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: every choice without an "index" read as choice 0: a whole answer of
    # n=2 was taken for one missing choice 1 and never stored.
    answer = completion(2)
    answer["choices"][1]["message"] = {"role": "assistant", "content": "The other one."}
    for choice in answer["choices"]:
        del choice["index"]
    upstream.plain = answer
    async with open_client(upstream) as client:
        assert (await client.complete(**ask(n=2))).cache is CacheStatus.MISS
        assert (await client.complete(**ask(n=2))).cache is CacheStatus.HIT
        texts: dict[int, str] = {}
        async for piece in client.stream(**ask(n=2)):  # replayed: one choice each
            for choice in piece.raw["choices"]:
                content = choice["delta"].get("content") or ""
                texts[choice["index"]] = texts.get(choice["index"], "") + content
        assert texts == {0: "The whole answer.", 1: "The other one."}
    assert upstream.calls == 1


async def test_an_answer_orjson_refuses_is_served_as_openai_reads_it_never_stored(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: NaN and a lone surrogate, which the openai package reads, failed the
    # call ("response is not JSON"), and three such answers ejected the endpoint.
    answer = completion(1)
    answer["choices"][0]["message"]["content"] = "half \ud83d"
    answer["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": math.nan}]}
    upstream.plain = answer  # written by the standard library: NaN, and "\ud83d" escaped
    async with open_client(upstream) as client:
        for _ in range(4):
            served = await client.complete(**ask())
            assert served.cache is CacheStatus.MISS  # served as it came, never stored
            assert served.content == "half \ud83d"
            assert math.isnan(served.raw["choices"][0]["logprobs"]["content"][0]["logprob"])
        assert client.stats.errors == 0
    assert upstream.calls == 4


async def test_a_surrogate_pair_split_across_two_chunks_is_served_never_stored(
    upstream: ScriptedUpstream,
) -> None:
    # Regression: each chunk alone holds a lone surrogate, which orjson refuses: the
    # stream failed ("a stream chunk is not a JSON object").
    upstream.script = [
        raw_event(b'{"role":"assistant","content":"\\ud83d"}'),
        raw_event(b'{"content":"\\ude00"}', "stop"),
        usage_chunk(),
    ]
    async with open_client(upstream) as client:
        for _ in range(2):
            text, status = await read_text(client.stream(**ask()))
            assert (text, status) == ("\ud83d\ude00", CacheStatus.MISS)
    assert upstream.calls == 2


async def test_readers_of_a_loose_stream_each_get_their_own_chunks(
    upstream: ScriptedUpstream,
) -> None:
    upstream.script = [
        raw_event(b'{"role":"assistant","content":"\\ud83d"}', "stop"),
        usage_chunk(),
    ]
    upstream.before_done = asyncio.Event()
    async with open_client(upstream) as client:
        first, second = client.stream(**ask()), client.stream(**ask())
        mine = await anext(first)
        theirs = await anext(second)  # the same upstream stream, joined
        mine.raw["choices"][0]["delta"]["content"] = "changed"
        assert theirs.raw["choices"][0]["delta"]["content"] == "\ud83d"
        upstream.before_done.set()
        await first.aclose()
        await second.aclose()
    assert upstream.calls == 1


async def test_choices_numbered_in_part_are_never_stored(upstream: ScriptedUpstream) -> None:
    # Regression: numbered by position where unnumbered, [0 "A", - "B", 1 "C"] had two
    # choices 1: stored, and replayed as {0: "A", 1: "BC"}.
    answer = completion(3)
    for choice, text in zip(answer["choices"], "ABC", strict=True):
        choice["message"] = {"role": "assistant", "content": text}
    del answer["choices"][1]["index"]
    answer["choices"][2]["index"] = 1
    upstream.plain = answer
    async with open_client(upstream) as client:
        for _ in range(2):
            assert (await client.complete(**ask(n=2))).cache is CacheStatus.MISS
    assert upstream.calls == 2


async def test_a_stream_cut_at_the_end_of_its_grace_is_joined_by_no_one(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: cut without being forgotten, a stream whose grace ran out could still
    # be joined by a complete() of the same request, which got its CancelledError.
    graces = held_graces(monkeypatch)
    async with left_in_its_tail(upstream) as (client, done):
        graces[0]()  # the grace runs out with nobody reading: cut
        done.set()
        assert (await client.complete(**ask())).content == "The whole answer."  # its own call
    assert upstream.calls == 2


async def test_a_large_body_orjson_refuses_still_fails_as_not_json(
    upstream: ScriptedUpstream,
) -> None:
    # Read the standard library's way, an 18 MB answer blocked the loop for 0.4 s, only
    # to fail; past a bound it fails at once, as before.
    answer = completion(1)
    answer["choices"][0]["message"]["content"] = "x" * (300 * 1024)
    answer["choices"][0]["logprobs"] = {"content": [{"token": "x", "logprob": math.nan}]}
    upstream.plain = answer
    async with open_client(upstream) as client:
        with pytest.raises(APIResponseError, match="not JSON"):
            await client.complete(**ask())


FIRST_EVENT = b"data: " + orjson.dumps(chunk({"role": "assistant", "content": "hel"}))

#: Bodies that end inside an event (no blank line after it), cleanly: no connection error.
ENDED_INSIDE_AN_EVENT = {
    "ended_mid_line": FIRST_EVENT[: len(FIRST_EVENT) // 2],
    "ended_before_the_line_end": FIRST_EVENT,
    "ended_before_the_blank_line": FIRST_EVENT + b"\n",
}


@pytest.mark.parametrize("ending", ENDED_INSIDE_AN_EVENT.values(), ids=ENDED_INSIDE_AN_EVENT)
async def test_a_body_ended_inside_an_event_is_a_stream_ended_before_done(
    upstream: ScriptedUpstream, ending: bytes
) -> None:
    # Regression: the event the body ended inside was taken as a chunk, so a cut mid-line
    # failed as "not a JSON object" (an answer never retried), where the same cut at an
    # event boundary was a connection error. WHATWG discards such an event.
    upstream.script = [chunk({"role": "assistant", "content": "Hi"})]
    upstream.ending = ending
    async with open_client(upstream) as client:
        stream = client.stream(**ask())
        read: list[str | None] = []
        with pytest.raises(APIConnectionError, match=r"ended before \[DONE\]"):
            async for piece in stream:
                read.append(piece.content)
    assert read == ["Hi"]


@pytest.mark.parametrize("ending", [b"data: [DONE]", b"data: [DONE]\n", b"data: [DONE]\r"])
async def test_a_done_that_lost_its_blank_line_still_ends_a_whole_stream(
    upstream: ScriptedUpstream, ending: bytes
) -> None:
    upstream.script = [chunk({"role": "assistant", "content": "Hi"}, "stop"), usage_chunk()]
    upstream.ending = ending
    async with open_client(upstream) as client:
        _, answer = await collect(client)
        assert answer.content == "Hi"
        assert (await client.complete(**ask())).cache is CacheStatus.HIT
    assert upstream.calls == 1


@pytest.mark.parametrize("fault", ["error_chunk", "dropped", *ENDED_INSIDE_AN_EVENT])
async def test_a_failure_before_the_first_chunk_is_retried(fault: str) -> None:
    # Regression (adversarial review): only a stream's opening was retried, so an error
    # chunk as its first event, or a connection dropped before any, failed stream() at
    # once, though nothing had reached the reader and complete() would have retried.
    calls = 0

    async def serve(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        response = web.StreamResponse(status=200)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        if calls == 1 and fault == "dropped":
            assert request.transport is not None
            request.transport.close()
            return response
        if calls == 1 and fault in ENDED_INSIDE_AN_EVENT:
            await response.write(ENDED_INSIDE_AN_EVENT[fault])
            await response.write_eof()
            return response
        if calls == 1:
            error = {"code": 502, "message": "Provider returned error"}
            failed = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
            script = [{**chunk({}), "error": error, "choices": [failed]}]
        else:
            script = [
                chunk({"role": "assistant", "content": "hel"}),
                chunk({"content": "lo"}, "stop"),
            ]
        for item in [*script, usage_chunk()]:
            await response.write(b"data: " + orjson.dumps(item) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", serve)
    retry = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
    async with served(app) as url:
        endpoint = Endpoint("a", f"{url}/v1")
        async with Client(endpoints=[endpoint], cache=None, retry=retry) as client:
            chunks, completion = await collect(client)
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert "".join(deltas) == completion.content == "hello"  # the failed attempt's: none
    assert calls == 2

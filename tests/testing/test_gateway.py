"""FakeGateway over real loopback HTTP, driven by a plain aiohttp client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from limpet.testing import (
    DEFAULT_MODELS,
    UNKNOWN_MODEL_PRICE,
    FakeGateway,
    FakeModel,
    ModelPrice,
    PromptCacheResult,
    count_message_tokens,
    count_prompt_tokens,
    count_tokens,
)
from limpet.testing.content import compose_reply, stream_pieces, truncate_to_tokens
from tests.openai_shapes import assert_chat_completion, assert_chunks

Json = dict[str, Any]

SONNET = "anthropic/claude-sonnet-4.6"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Json:
        body: Json = orjson.loads(self.text)
        return body


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway(endpoints=("a", "b")) as gateway:
        yield gateway


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def chat(content: str = "Say hi.", **fields: Any) -> Json:
    return {
        "model": SONNET,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        **fields,
    }


async def post(
    session: aiohttp.ClientSession,
    gw: FakeGateway,
    body: Json | bytes,
    endpoint: str = "a",
    headers: Mapping[str, str] | None = None,
    time_limit: float | None = None,
) -> Reply:
    url = f"{gw.base_url(endpoint)}/chat/completions"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(
        url,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=time_limit),
    ) as response:
        return Reply(response.status, response.headers, await response.text())


def events(reply: Reply) -> list[str]:
    """The stream's events, comments included, without the blank-line separators."""
    assert reply.text.endswith("\n\n")
    return reply.text[: -len("\n\n")].split("\n\n")


def data_chunks(reply: Reply) -> list[Json]:
    return [
        orjson.loads(event.removeprefix("data: "))
        for event in events(reply)
        if event.startswith("data: ") and event != "data: [DONE]"
    ]


def streamed_content(chunks: list[Json]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


# --- pure parts --------------------------------------------------------------------------


def test_count_tokens_is_about_four_characters_each() -> None:
    assert [count_tokens(text) for text in ("", "a", "abcd", "abcde", "x" * 400)] == [
        0,
        1,
        1,
        2,
        100,
    ]


def test_list_content_counts_its_text_like_string_content() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    parts = [{"type": "text", "text": text[:20]}, {"type": "text", "text": text[20:]}]
    as_string = count_message_tokens({"role": "user", "content": text})
    as_parts = count_message_tokens({"role": "user", "content": parts})
    assert as_string > count_tokens(text)  # the per-message overhead
    assert abs(as_parts - as_string) <= 1  # each part rounds up on its own


def test_prompt_tokens_grow_with_each_message() -> None:
    one = chat("hello")
    two = {**one, "messages": [*one["messages"], {"role": "assistant", "content": "hi"}]}
    assert count_prompt_tokens(two) == count_prompt_tokens(one) + count_message_tokens(
        two["messages"][1]
    )


def test_replies_split_into_stream_pieces_that_join_back() -> None:
    for seed in range(20):
        text = compose_reply(random.Random(seed))
        assert 20 <= len(text.split()) <= 80
        pieces = stream_pieces(text)
        assert "".join(pieces) == text
        assert all(1 <= len(piece.split()) <= 3 for piece in pieces)


def test_truncation_gives_exactly_max_tokens() -> None:
    text = compose_reply(random.Random(1))
    cut, truncated = truncate_to_tokens(text, 5)
    assert truncated
    assert text.startswith(cut)
    assert count_tokens(cut) == 5
    assert truncate_to_tokens(text, 10_000) == (text, False)


def test_default_sonnet_price_lists_openrouter_strings() -> None:
    sonnet = next(model for model in DEFAULT_MODELS if model.id == SONNET)
    assert sonnet.listing()["pricing"] == {
        "prompt": "0.000003",
        "completion": "0.000015",
        "request": "0",
        "input_cache_read": "0.0000003",
        "input_cache_write": "0.00000375",
        "input_cache_write_1h": "0.000006",
    }


def test_fault_arguments_are_checked(gw: FakeGateway) -> None:
    ep = gw.endpoint("a")
    with pytest.raises(ValueError, match="400-599"):
        ep.fail(200)
    with pytest.raises(ValueError, match="times"):
        ep.fail(500, times=0)
    with pytest.raises(ValueError, match="seconds"):
        ep.delay(-1)
    with pytest.raises(ValueError, match="after_chunks"):
        ep.stream_error(after_chunks=-1)
    assert ep.pending_faults == ()


def test_prompt_cache_result_rejects_inconsistent_counts() -> None:
    with pytest.raises(ValueError):
        PromptCacheResult(cached_tokens=-1)
    with pytest.raises(ValueError):
        PromptCacheResult(cache_write_tokens=10, cache_write_1h_tokens=11)


def test_endpoint_names_must_be_unique_path_segments() -> None:
    for names in ((), ("a", "a"), ("a/b",), ("",)):
        with pytest.raises(ValueError):
            FakeGateway(endpoints=names)


# --- lifecycle ---------------------------------------------------------------------------


async def test_urls_and_lifecycle() -> None:
    gateway = FakeGateway(endpoints=("a",), api_key="sk-secret")
    with pytest.raises(RuntimeError, match="not started"):
        _ = gateway.url
    await gateway.start()
    try:
        assert gateway.url.startswith("http://127.0.0.1:")
        assert not gateway.url.endswith(":0")
        assert gateway.base_url("a") == f"{gateway.url}/a/v1"
        assert list(gateway.endpoints) == ["a"]
        assert "sk-secret" not in repr(gateway)
        with pytest.raises(KeyError):
            gateway.base_url("b")
        with pytest.raises(RuntimeError, match="already started"):
            await gateway.start()
    finally:
        await gateway.aclose()
    await gateway.aclose()
    with pytest.raises(RuntimeError, match="not started"):
        _ = gateway.url


# --- completions -------------------------------------------------------------------------


async def test_completion_has_openrouter_shape_and_headers(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    reply = await post(session, gw, chat(), endpoint="b")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert body["id"].startswith("gen-")
    assert reply.headers["X-Generation-Id"] == body["id"]
    assert reply.headers["x-request-id"]
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == SONNET
    assert body["provider"] == "b"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert 20 <= len(choice["message"]["content"].split()) <= 80

    again = (await post(session, gw, chat(), endpoint="b")).json()
    assert again["id"] != body["id"]


async def test_temperature_zero_is_deterministic(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    def content(reply: Reply) -> str:
        text: str = reply.json()["choices"][0]["message"]["content"]
        return text

    first = content(await post(session, gw, chat("What is a limpet?")))
    reordered = dict(reversed(list(chat("What is a limpet?", temperature=0.0).items())))
    assert content(await post(session, gw, reordered)) == first
    assert content(await post(session, gw, chat("What is a limpet?"), endpoint="b")) == first
    assert content(await post(session, gw, chat("What is a limpet?", user="u1"))) == first
    assert content(await post(session, gw, chat("What is a barnacle?"))) != first
    other_model = chat("What is a limpet?", model="openai/gpt-5-mini")
    assert content(await post(session, gw, other_model)) != first


async def test_sampling_varies_but_is_reproducible_per_seed(
    session: aiohttp.ClientSession,
) -> None:
    async def contents(gateway: FakeGateway) -> list[str]:
        sampled = [chat(temperature=0.7), {k: v for k, v in chat().items() if k != "temperature"}]
        replies = [await post(session, gateway, body) for body in sampled * 2]
        return [reply.json()["choices"][0]["message"]["content"] for reply in replies]

    async with FakeGateway(seed=7) as one, FakeGateway(seed=7) as two:
        first = await contents(one)
        assert len(set(first)) == len(first)
        assert await contents(two) == first
        one.reset()
        assert await contents(one) == first
    async with FakeGateway(seed=8) as other:
        assert await contents(other) != first


async def test_max_tokens_cuts_the_same_reply(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    full = (await post(session, gw, chat())).json()
    cut = (await post(session, gw, chat(max_tokens=5))).json()
    text: str = cut["choices"][0]["message"]["content"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 5
    assert full["choices"][0]["message"]["content"].startswith(text)


async def test_usage_adds_up_and_cost_matches_listed_prices(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{gw.base_url('a')}/models") as response:
        listing = await response.json()
    pricing = next(model["pricing"] for model in listing["data"] if model["id"] == SONNET)
    body = chat("Explain prompt caching in one paragraph.", max_tokens=1000)
    usage = (await post(session, gw, body)).json()["usage"]

    content_tokens = count_tokens("Explain prompt caching in one paragraph.")
    assert usage["prompt_tokens"] == count_prompt_tokens(body) > content_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    expected = usage["prompt_tokens"] * Decimal(pricing["prompt"]) + usage[
        "completion_tokens"
    ] * Decimal(pricing["completion"])
    assert usage["cost"] == pytest.approx(float(expected), rel=1e-12)


async def test_unknown_models_are_answered_at_the_default_price(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    reply = await post(session, gw, chat(model="acme/unlisted-1"))
    assert reply.status == 200
    usage = reply.json()["usage"]
    expected = UNKNOWN_MODEL_PRICE.cost(
        uncached=usage["prompt_tokens"], completion=usage["completion_tokens"]
    )
    assert usage["cost"] == expected > 0


async def test_prompt_cache_seam_prices_reads_and_writes(
    session: aiohttp.ClientSession,
) -> None:
    class FixedCache:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int, float]] = []

        def account(
            self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
        ) -> PromptCacheResult:
            self.seen.append((model, prompt_tokens, now))
            return PromptCacheResult(cached_tokens=6, cache_write_tokens=4, cache_write_1h_tokens=1)

        def reset(self) -> None:
            self.seen.clear()

    price = ModelPrice(
        prompt=10.0, completion=20.0, cache_read=1.0, cache_write=12.5, cache_write_1h=20.0
    )
    model = FakeModel("test/cached", price)
    async with FakeGateway(
        endpoints=("a",), models=[model], prompt_cache=FixedCache, clock=lambda: 1_700_000_000.5
    ) as gateway:
        reply = await post(session, gateway, chat("x" * 200, model="test/cached"))
        body = reply.json()
        usage = body["usage"]
        assert body["created"] == 1_700_000_000
        assert usage["prompt_tokens_details"] == {"cached_tokens": 6, "cache_write_tokens": 4}
        uncached = usage["prompt_tokens"] - 10
        expected = (
            Decimal(uncached) * 10 + 6 * 1 + 3 * Decimal("12.5") + 1 * 20
        ) / 1_000_000 + Decimal(usage["completion_tokens"]) * 20 / 1_000_000
        assert usage["cost"] == pytest.approx(float(expected), rel=1e-12)
        cache = gateway.endpoint("a").prompt_cache
        assert isinstance(cache, FixedCache)
        assert cache.seen == [("test/cached", usage["prompt_tokens"], 1_700_000_000.5)]
        gateway.reset()
        assert cache.seen == []


async def test_models_listing_serves_string_prices(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{gw.base_url('b')}/models") as response:
        assert response.status == 200
        listing = await response.json()
    assert [model["id"] for model in listing["data"]] == [model.id for model in DEFAULT_MODELS]
    for model in listing["data"]:
        assert isinstance(model["name"], str)
        assert isinstance(model["context_length"], int)
        assert all(isinstance(value, str) for value in model["pricing"].values())
        Decimal(model["pricing"]["prompt"])  # a plain decimal, no exponent
        assert "e" not in model["pricing"]["prompt"].lower()
    assert gw.endpoint("b").model_listings == 1
    assert gw.endpoint("b").calls == 0


async def test_models_override(session: aiohttp.ClientSession) -> None:
    only = FakeModel("x/one", ModelPrice(prompt=0.5, completion=1.5), "One", 8192)
    async with (
        FakeGateway(models=[only]) as gateway,
        session.get(f"{gateway.base_url('a')}/models") as response,
    ):
        listing = await response.json()
    assert listing == {
        "data": [
            {
                "id": "x/one",
                "name": "One",
                "context_length": 8192,
                "pricing": {"prompt": "0.0000005", "completion": "0.0000015", "request": "0"},
            }
        ]
    }


# --- streaming ---------------------------------------------------------------------------


USAGE_PLEASE = {"include_usage": True}


async def test_stream_matches_the_plain_reply(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    plain = (await post(session, gw, chat())).json()
    assert_chat_completion(plain)
    reply = await post(session, gw, chat(stream=True, stream_options=USAGE_PLEASE))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    all_events = events(reply)
    assert all_events[0] == ": OPENROUTER PROCESSING"
    assert all_events[-1] == "data: [DONE]"
    chunks = data_chunks(reply)
    assert_chunks(chunks)
    assert {chunk["id"] for chunk in chunks} == {reply.headers["X-Generation-Id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = chunks[1:-2]
    assert len(content_chunks) > 5
    assert all(1 <= len(c["choices"][0]["delta"]["content"].split()) <= 3 for c in content_chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert streamed_content(chunks) == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]
    assert gw.endpoint("a").completions == 2


async def test_stream_cut_by_max_tokens_matches_too(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    plain = (await post(session, gw, chat(max_tokens=7))).json()
    streamed = chat(max_tokens=7, stream=True, stream_options=USAGE_PLEASE)
    chunks = data_chunks(await post(session, gw, streamed))
    assert streamed_content(chunks) == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == plain["usage"]


async def test_a_stream_has_usage_only_when_asked_unless_the_endpoint_always_sends_it(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    unasked = data_chunks(await post(session, gw, chat(stream=True)))
    assert all(chunk["choices"] and "usage" not in chunk for chunk in unasked)
    declined = chat(stream=True, stream_options={"include_usage": False})
    assert "usage" not in data_chunks(await post(session, gw, declined))[-1]
    gw.endpoint("a").always_stream_usage = True  # OpenRouter's way
    always = data_chunks(await post(session, gw, chat(stream=True)))
    assert always[-1]["choices"] == [] and always[-1]["usage"]["completion_tokens"] > 0
    assert_chunks([*unasked, *always])


async def test_n_choices_differ_and_stream_interleaved(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    plain = (await post(session, gw, chat(n=3))).json()
    assert_chat_completion(plain)
    contents = [choice["message"]["content"] for choice in plain["choices"]]
    assert [choice["index"] for choice in plain["choices"]] == [0, 1, 2]
    assert len(set(contents)) == 3
    assert plain["usage"]["completion_tokens"] == sum(map(count_tokens, contents))
    chunks = data_chunks(await post(session, gw, chat(n=3, stream=True)))
    assert_chunks(chunks)
    assert all(len(chunk["choices"]) == 1 for chunk in chunks)
    indexes = [chunk["choices"][0]["index"] for chunk in chunks]
    assert indexes[:6] == [0, 1, 2, 0, 1, 2]  # the openings, then the first pieces
    for index, content in enumerate(contents):
        own = [chunk for chunk in chunks if chunk["choices"][0]["index"] == index]
        assert streamed_content(own) == content


async def test_logprobs_come_per_token_whole_and_streamed(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    body = chat(logprobs=True, top_logprobs=2)
    choice = (await post(session, gw, body)).json()["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert "".join(token["token"] for token in tokens) == choice["message"]["content"]
    assert all(len(token["top_logprobs"]) == 2 for token in tokens)
    chunks = data_chunks(await post(session, gw, {**body, "stream": True}))
    assert_chunks(chunks)
    for chunk in chunks[1:-1]:
        logprobs = chunk["choices"][0]["logprobs"]
        text = "".join(token["token"] for token in logprobs["content"])
        assert text == chunk["choices"][0]["delta"]["content"]
    streamed = [t for c in chunks for t in (c["choices"][0]["logprobs"] or {}).get("content", [])]
    assert streamed == tokens
    assert (await post(session, gw, chat())).json()["choices"][0]["logprobs"] is None


# --- faults ------------------------------------------------------------------------------


async def test_status_fault_sends_error_body_and_retry_headers(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").fail(429, retry_after=2, retry_after_ms=1500, message="slow down")
    gw.endpoint("a").fail(503, retry_after=0.5)
    reply = await post(session, gw, chat())
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "2"
    assert reply.headers["retry-after-ms"] == "1500"
    assert reply.json() == {"error": {"code": 429, "message": "slow down"}}
    reply = await post(session, gw, chat())
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "0.5"
    assert reply.json()["error"]["code"] == 503


async def test_faults_are_consumed_in_order_then_requests_succeed(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    ep = gw.endpoint("a")
    ep.fail(500, times=2)
    ep.wrong_shape()
    queued = ep.pending_faults
    assert len(queued) == 3
    statuses = [(await post(session, gw, chat())).status for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    assert ep.calls == 4
    assert ep.completions == 1
    assert ep.pending_faults == ()
    assert gw.endpoint("b").calls == 0


async def test_clear_faults(gw: FakeGateway, session: aiohttp.ClientSession) -> None:
    gw.endpoint("a").fail(500, times=3)
    gw.endpoint("a").clear_faults()
    assert (await post(session, gw, chat())).status == 200


async def test_delay_fault_trips_a_client_timeout(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").delay(30)
    with pytest.raises(asyncio.TimeoutError):
        await post(session, gw, chat(), time_limit=0.05)
    assert (await post(session, gw, chat(), time_limit=5)).status == 200


async def test_delay_and_latency_hold_the_answer_back(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    loop = asyncio.get_running_loop()
    gw.endpoint("a").delay(0.05)
    started = loop.time()
    assert (await post(session, gw, chat())).status == 200
    assert loop.time() - started >= 0.05
    gw.endpoint("b").latency = 0.05
    started = loop.time()
    assert (await post(session, gw, chat(stream=True), endpoint="b")).status == 200
    assert loop.time() - started >= 0.05


async def test_dropped_connection_is_a_client_error(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").drop_connection()
    with pytest.raises(aiohttp.ClientError):
        await post(session, gw, chat())
    assert (await post(session, gw, chat())).status == 200
    assert gw.endpoint("a").calls == 2
    assert gw.endpoint("a").completions == 1


async def test_dropped_stream_breaks_mid_way(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").drop_connection(after_chunks=2)
    url = f"{gw.base_url('a')}/chat/completions"
    received = b""
    with pytest.raises(aiohttp.ClientError):
        async with session.post(url, json=chat(stream=True)) as response:
            assert response.status == 200
            async for line in response.content:
                received += line
    assert b"data: [DONE]" not in received
    assert gw.endpoint("a").completions == 0


async def test_malformed_body(gw: FakeGateway, session: aiohttp.ClientSession) -> None:
    gw.endpoint("a").malformed()
    reply = await post(session, gw, chat())
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.text == '{"choices": ['
    with pytest.raises(orjson.JSONDecodeError):
        reply.json()


async def test_malformed_stream(gw: FakeGateway, session: aiohttp.ClientSession) -> None:
    gw.endpoint("a").malformed()
    reply = await post(session, gw, chat(stream=True))
    assert reply.status == 200
    assert events(reply) == [": OPENROUTER PROCESSING", 'data: {"choices": [', "data: [DONE]"]


async def test_wrong_shape(gw: FakeGateway, session: aiohttp.ClientSession) -> None:
    gw.endpoint("a").wrong_shape()
    reply = await post(session, gw, chat())
    assert reply.status == 200
    assert reply.json() == {"hello": "world"}


async def test_stream_error_chunk_after_n_chunks(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    plain = (await post(session, gw, chat())).json()["choices"][0]["message"]["content"]
    gw.endpoint("a").stream_error(after_chunks=2)
    reply = await post(session, gw, chat(stream=True))
    assert reply.status == 200
    assert "data: [DONE]" not in events(reply)
    chunks = data_chunks(reply)
    assert len(chunks) == 1 + 2 + 1  # role, two content chunks, the error
    error = chunks[-1]
    assert error["error"] == {"code": 502, "message": "Provider disconnected unexpectedly"}
    assert error["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    assert plain.startswith(streamed_content(chunks)) and streamed_content(chunks)
    assert gw.endpoint("a").completions == 1


async def test_stream_error_on_a_plain_request_is_an_error_status(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").stream_error()
    reply = await post(session, gw, chat())
    assert reply.status == 502
    assert reply.json()["error"]["code"] == 502


async def test_status_fault_before_a_stream(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").fail(429, retry_after=1)
    reply = await post(session, gw, chat(stream=True))
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["code"] == 429


# --- availability, auth, routing, validation ---------------------------------------------


async def test_take_down_and_bring_up(gw: FakeGateway, session: aiohttp.ClientSession) -> None:
    ep = gw.endpoint("a")
    ep.fail(500)
    ep.take_down()
    reply = await post(session, gw, chat())
    assert reply.status == 503
    assert reply.json()["error"]["code"] == 503
    assert (await post(session, gw, chat(), endpoint="b")).status == 200
    ep.bring_up()
    assert (await post(session, gw, chat())).status == 500  # faults wait while down
    assert (await post(session, gw, chat())).status == 200
    assert ep.calls == 3


async def test_api_key_is_required_and_never_echoed(session: aiohttp.ClientSession) -> None:
    key = "sk-or-v1-very-secret"
    async with FakeGateway(api_key=key) as gateway:
        missing = await post(session, gateway, chat())
        wrong = await post(session, gateway, chat(), headers={"Authorization": "Bearer nope"})
        right = await post(session, gateway, chat(), headers={"Authorization": f"Bearer {key}"})
        assert gateway.endpoint("a").calls == 3
    assert (missing.status, wrong.status, right.status) == (401, 401, 200)
    assert missing.json()["error"]["code"] == 401
    for reply in (missing, wrong, right):
        assert key not in reply.text
        assert all(key not in value for value in reply.headers.values())


async def test_unknown_endpoint_and_path_are_404_json(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{gw.url}/zzz/v1/chat/completions", json=chat()) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == 404
    async with session.get(f"{gw.url}/zzz/v1/models") as response:
        assert response.status == 404
    async with session.get(f"{gw.url}/a/v2/nothing") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == 404
    assert gw.total_calls == 0


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
        (orjson.dumps({"model": SONNET}), "messages"),
        (orjson.dumps({"model": SONNET, "messages": []}), "messages"),
        (orjson.dumps({**chat(), "max_tokens": 0}), "max_tokens"),
        (orjson.dumps({**chat(), "temperature": "hot"}), "temperature"),
        (orjson.dumps({**chat(), "n": 0}), "n:"),
        (orjson.dumps({**chat(), "n": 129}), "n: expected an integer from 1 to 128"),
        (orjson.dumps({**chat(), "logprobs": "yes"}), "logprobs"),
        (orjson.dumps({**chat(), "top_logprobs": 2}), "top_logprobs"),
        (orjson.dumps({**chat(), "stream_options": "usage"}), "stream_options"),
    ],
)
async def test_invalid_requests_are_400(
    gw: FakeGateway, session: aiohttp.ClientSession, body: bytes, complaint: str
) -> None:
    gw.endpoint("a").fail(500)
    reply = await post(session, gw, body)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["code"] == 400
    assert complaint in error["message"]
    assert gw.endpoint("a").calls == 1
    assert len(gw.endpoint("a").pending_faults) == 1  # an invalid request uses no fault


async def test_counters_and_requests_per_endpoint(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    bodies = [chat("one"), chat("two"), chat("three")]
    for body, endpoint in zip(bodies, ["a", "b", "a"], strict=True):
        await post(session, gw, body, endpoint=endpoint)
    a, b = gw.endpoint("a"), gw.endpoint("b")
    assert (a.calls, a.completions, b.calls, b.completions) == (2, 2, 1, 1)
    assert a.requests == [bodies[0], bodies[2]]
    assert a.last_headers is not None
    assert a.last_headers.get("content-type") == "application/json"
    assert a.last_request == bodies[2]
    assert b.requests == [bodies[1]]
    assert gw.total_calls == 3
    assert gw.total_completions == 3

    a.fail(500)
    b.take_down()
    gw.reset()
    assert (a.calls, a.completions, a.requests, a.pending_faults) == (0, 0, [], ())
    assert gw.endpoint("a").last_headers is None
    assert b.up
    assert gw.total_calls == 0


async def test_concurrent_requests_are_all_answered(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").latency = 0.01
    replies = await asyncio.gather(*(post(session, gw, chat(str(i))) for i in range(20)))
    assert {reply.status for reply in replies} == {200}
    assert gw.endpoint("a").calls == gw.endpoint("a").completions == 20

"""Trust, against the FakeGateway over loopback: an unknown cost is None (never $0), a
generation that failed inside a 200 is an error (never an empty answer, never cached), and
the API key, echoed back by the upstream in any shape, appears in no error and no log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from limpet import APIGenerationError, CacheStatus, Client, Endpoint, RetryConfig, Usage
from limpet.errors import APIError, APIStreamError
from limpet.http.chunks import StreamChunk
from limpet.pipeline.stream import CompletionStream
from limpet.testing import FakeGateway
from limpet.testing.faults import EchoShape
from tests.integration.chat import ask
from tests.integration.scripted import chunk, scripted_upstream
from tests.loopback import served

KEY = "sk-or-v1-trust-0123456789abcdef"
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)

pytestmark = pytest.mark.gateway(endpoints=("a", "b"), api_key=KEY)


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[Client]:
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as c:
        yield c


async def collect(stream: CompletionStream) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


# An unknown cost is None


async def test_an_answer_without_usage_has_no_cost_and_neither_do_its_hits(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").omit_usage()
    first = await client.complete(**ask())
    second = await client.complete(**ask())
    assert "usage" not in first.raw
    assert (first.cache, second.cache) == (CacheStatus.MISS, CacheStatus.HIT)
    assert first.cost is None and second.cost is None
    assert first.usage == second.usage == Usage(reported=False)
    assert gateway.endpoint("a").calls == 1
    stats = client.stats
    assert (stats.unpriced, stats.cost_usd, stats.saved_usd) == (2, 0.0, 0.0)
    assert stats.as_dict()["unpriced"] == 2


async def test_an_answer_with_usage_is_priced_and_reported(
    client: Client, gateway: FakeGateway
) -> None:
    first = await client.complete(**ask())
    second = await client.complete(**ask())
    assert first.usage.reported and second.usage.reported
    assert first.cost is not None and first.cost.usd > 0
    assert second.cost is not None and second.cost.saved_usd == first.cost.usd
    assert client.stats.unpriced == 0


async def test_coalesced_callers_of_a_call_without_usage_have_no_cost(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    ep.omit_usage()
    results = await asyncio.gather(*(client.complete(**ask()) for _ in range(10)))
    assert ep.calls == 1
    assert sorted(r.cache.value for r in results).count("coalesced") == 9
    assert all(r.cost is None and not r.usage.reported for r in results)
    assert client.stats.unpriced == 10


async def test_a_stream_without_usage_has_no_cost_and_neither_does_its_replay(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").omit_usage()
    live = client.stream(**ask())
    live_chunks = await collect(live)
    replay = client.stream(**ask())
    await collect(replay)
    assert live_chunks and all("usage" not in chunk.raw for chunk in live_chunks)
    assert live.completion is not None and replay.completion is not None
    assert (live.completion.cache, replay.completion.cache) == (CacheStatus.MISS, "hit")
    assert live.completion.cost is None and replay.completion.cost is None
    assert not live.completion.usage.reported and not replay.completion.usage.reported
    assert gateway.endpoint("a").calls == 1
    assert client.stats.unpriced == 2


# A generation that failed inside a 200


async def test_a_failed_generation_is_an_error_and_is_never_cached(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.generation_error(times=FAST_RETRY.max_attempts)
    with pytest.raises(APIGenerationError) as info:
        await client.complete(**ask())
    assert not isinstance(info.value, APIStreamError)
    assert info.value.status_code == 502 and info.value.endpoint == "a"
    assert "Provider disconnected unexpectedly" in str(info.value)
    assert ep.calls == FAST_RETRY.max_attempts  # a provider failure: retried
    after = await client.complete(**ask())
    assert after.cache is CacheStatus.MISS and after.finish_reason == "stop"
    assert ep.calls == FAST_RETRY.max_attempts + 1
    assert (client.stats.errors, client.stats.misses) == (1, 1)


async def test_a_failed_generation_is_retried_and_the_retry_answers(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.generation_error()
    answer = await client.complete(**ask())
    assert answer.content and answer.finish_reason == "stop"
    assert ep.calls == 2


async def test_a_failed_generation_that_reported_usage_is_counted_as_spent(
    client: Client, gateway: FakeGateway
) -> None:
    """A 200 whose generation failed part-way, with its usage (and OpenRouter's cost),
    was billed: it is counted as spent, retried or not, beside the answer that came."""
    ep = gateway.endpoint("a")
    ep.generation_error()  # billed, then retried
    answer = await client.complete(**ask())
    assert answer.cost is not None and answer.cost.usd > 0
    # Both answers cost the same (the fake bills the prompt and the whole completion).
    assert client.stats.cost_usd == pytest.approx(2 * answer.cost.usd)
    assert client.stats.prompt_tokens == 2 * answer.usage.prompt_tokens
    before = client.stats.prompt_tokens
    ep.generation_error(times=FAST_RETRY.max_attempts)  # billed on every try, then raised
    with pytest.raises(APIGenerationError) as failed:
        await client.complete(**ask("another"))
    billed = failed.value.billed
    assert billed is not None and billed["usage"]["prompt_tokens"] > 0
    tries = FAST_RETRY.max_attempts
    assert client.stats.prompt_tokens == before + tries * billed["usage"]["prompt_tokens"]


async def test_a_failed_generation_answering_a_stream_as_json_is_counted_as_spent() -> None:
    """A stream asked for and a failed generation answered as a plain JSON 200, with its
    usage: paid for, counted as a plain answer's is (the stream's opening raised before
    any accounting)."""
    failed = {
        "id": "gen-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "half"},
                "finish_reason": "error",
                "error": {"code": 400, "message": "flagged mid-answer"},
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105, "cost": 0.01},
    }

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(failed)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    async with served(app) as url:
        endpoint = Endpoint("a", url + "/v1")
        async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as client:
            with pytest.raises(APIGenerationError, match="flagged"):
                async with client.stream(**ask()) as stream:
                    async for _ in stream:
                        pass
            assert (client.stats.prompt_tokens, client.stats.cost_usd) == (100, 0.01)


async def test_a_stream_that_fails_with_its_usage_on_the_error_chunk_is_counted() -> None:
    """OpenRouter's mid-stream failure: an error chunk (``finish_reason: "error"``) that
    carries the usage billed. Counted as spent, as a failed plain answer is."""
    usage = {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43, "cost": 0.02}
    failed = {
        **chunk({}, "error"),
        "error": {"code": 502, "message": "provider died"},
        "usage": usage,
    }
    async with scripted_upstream() as upstream:
        upstream.script = [chunk({"role": "assistant", "content": "Hel"}), failed]
        endpoint = Endpoint("a", upstream.url)
        async with Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1)) as client:
            with pytest.raises(APIStreamError, match="provider died") as raised:
                async with client.stream(**ask()) as stream:
                    async for _ in stream:
                        pass
            assert raised.value.billed is not None
            assert (client.stats.prompt_tokens, client.stats.cost_usd) == (40, 0.02)


async def test_a_failed_generation_with_a_client_error_code_is_final(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.generation_error(status=400, message="context length exceeded mid-answer")
    with pytest.raises(APIGenerationError, match="context length") as info:
        await client.complete(**ask())
    assert info.value.status_code == 400
    assert ep.calls == 1


async def test_a_failed_generation_fails_over_to_the_next_endpoint(gateway: FakeGateway) -> None:
    endpoints = [Endpoint(n, gateway.base_url(n), api_key=KEY) for n in ("a", "b")]
    async with Client(endpoints=endpoints, retry=RetryConfig(max_attempts=1)) as client:
        first = await client.complete(**ask())
        other = "b" if first.endpoint == "a" else "a"
        gateway.endpoint(first.endpoint).generation_error()
        # Same conversation (so the same first choice), another request.
        moved = await client.complete(**ask(max_tokens=99))
    assert moved.endpoint == other and moved.content
    assert (gateway.endpoint(first.endpoint).calls, gateway.endpoint(other).calls) == (2, 1)


async def test_every_waiter_gets_a_failed_generation_and_nothing_is_cached(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    ep.generation_error(status=403, message="flagged mid-answer")  # final: no retry
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as client:
        results = await asyncio.gather(
            *(client.complete(**ask()) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, APIGenerationError) for r in results)
        assert ep.calls == 1
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_a_streamed_generation_that_fails_is_a_stream_error_never_cached(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.generation_error()
    with pytest.raises(APIStreamError) as info:
        await collect(client.stream(**ask()))
    assert isinstance(info.value, APIGenerationError) and info.value.status_code == 502
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


# The key, echoed back, is scrubbed everywhere


def every_text(exc: BaseException) -> list[str]:
    """Everything an error shows: str, repr, args and its attributes."""
    texts = [str(exc), repr(exc), *map(str, exc.args)]
    texts.extend(str(value) for value in vars(exc).values())
    return texts


async def raised_by(client: Client, *, stream: bool) -> APIError:
    with pytest.raises(APIError) as info:
        if stream:
            await collect(client.stream(**ask()))
        else:
            await client.complete(**ask())
    return info.value


@pytest.mark.parametrize("shape", ["json", "text", "header", "sse"])
@pytest.mark.parametrize("status", [401, 500])
async def test_the_key_echoed_in_any_error_shape_appears_in_no_error_and_no_log(
    client: Client,
    gateway: FakeGateway,
    caplog: pytest.LogCaptureFixture,
    shape: EchoShape,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG, logger="limpet")
    ep = gateway.endpoint("a")
    ep.echo_authorization(shape, times=FAST_RETRY.max_attempts, status=status)
    error = await raised_by(client, stream=shape == "sse")
    assert all(KEY not in text for text in every_text(error))
    assert KEY not in caplog.text
    # The echo did reach the client, scrubbed where the key was.
    shown = error.request_id if shape == "header" else str(error)  # type: ignore[attr-defined]
    assert "***" in shown
    # A 500 is retried (and each retry logged); a 401 and a broken stream are final.
    retried = status == 500 and shape != "sse"
    assert ep.calls == (FAST_RETRY.max_attempts if retried else 1)
    assert ("attempt 1 failed" in caplog.text) is retried


@pytest.mark.parametrize(
    ("arrange", "stream"),
    [
        ("generation", False),
        ("generation", True),
        ("stream_error", True),
        ("status", False),
    ],
)
async def test_a_key_inside_an_upstream_message_is_scrubbed(
    client: Client, gateway: FakeGateway, arrange: str, stream: bool
) -> None:
    ep = gateway.endpoint("a")
    message = f"upstream said: key {KEY}, header Authorization: Bearer {KEY}"
    if arrange == "generation":
        ep.generation_error(status=400, message=message)
    elif arrange == "stream_error":
        ep.stream_error(after_chunks=1, status=400, message=message)
    else:
        ep.fail(400, message=message)
    error = await raised_by(client, stream=stream)
    assert all(KEY not in text for text in every_text(error))
    assert "key ***, header Authorization: Bearer ***" in str(error)


@pytest.mark.parametrize("shape", ["json", "text", "header", "sse"])
async def test_a_key_sent_per_call_in_extra_headers_is_scrubbed_too(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture, shape: EchoShape
) -> None:
    caplog.set_level(logging.DEBUG, logger="limpet")
    gateway.endpoint("a").echo_authorization(shape, times=1, status=401)
    per_call: dict[str, Any] = {"extra_headers": {"Authorization": f"Bearer {KEY}"}}
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], retry=FAST_RETRY) as c:
        with pytest.raises(APIError) as info:
            if shape == "sse":
                await collect(c.stream(**ask(), **per_call))
            else:
                await c.complete(**ask(), **per_call)
    assert all(KEY not in text for text in every_text(info.value))
    assert KEY not in caplog.text

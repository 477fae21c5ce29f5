"""ProviderPromptCache: the fake provider's prompt cache follows the providers' rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from limpet.testing import FakeGateway, PromptCacheResult, count_prompt_tokens
from limpet.testing.catalog import DEFAULT_MODELS
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.provider_cache import (
    CACHED_LATENCY_SAVING,
    CacheRules,
    PromptCacheRefusal,
    ProviderPromptCache,
    cached_latency,
)
from tests.fakes import FakeClock

SONNET = "anthropic/claude-sonnet-4.6"
HAIKU = "anthropic/claude-haiku-4.5"
GPT = "openai/gpt-5-mini"
CC: dict[str, Any] = {"type": "ephemeral"}


def words(tokens: int, seed: str = "") -> str:
    """Text of about ``tokens`` tokens (4 characters each)."""
    return (seed + "abc " * tokens)[: tokens * 4]


def block(text: str, mark: dict[str, Any] | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": text}
    if mark is not None:
        part["cache_control"] = mark
    return part


def request(model: str, *messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "temperature": 0, **fields}


def rag(doc_tokens: int, question: str = "why?", model: str = SONNET, **mark: Any) -> Any:
    return request(
        model,
        {"role": "system", "content": "Answer from the document."},
        {
            "role": "user",
            "content": [block(words(doc_tokens), {**CC, **mark}), block(question)],
        },
    )


class Cache:
    """A ProviderPromptCache with its own clock, accounting whole requests."""

    def __init__(self) -> None:
        self.cache = ProviderPromptCache()
        self.now = 0.0

    def send(self, body: dict[str, Any]) -> PromptCacheResult:
        prompt = count_prompt_tokens(body)
        result = self.cache.account(body["model"], body, prompt, now=self.now)
        assert result.total <= prompt
        return result


@pytest.fixture
def cache() -> Cache:
    return Cache()


# --- Explicit caching (anthropic/*) ---------------------------------------------------------


def test_a_breakpoint_writes_then_reads_the_prefix_up_to_it(cache: Cache) -> None:
    first = cache.send(rag(2000))
    prefix = count_prompt_tokens(rag(2000)) - count_prompt_tokens(
        request(SONNET, {"role": "user", "content": "why?"})
    )
    assert first.cached_tokens == 0
    assert first.cache_write_tokens >= 2000
    second = cache.send(rag(2000, question="and how?"))
    assert second.cached_tokens == first.cache_write_tokens
    assert second.cache_write_tokens == 0
    assert abs(second.cached_tokens - prefix) <= 8  # the question itself is never cached


def test_without_a_breakpoint_nothing_is_cached(cache: Cache) -> None:
    body = request(SONNET, {"role": "user", "content": words(3000)})
    assert cache.send(body) == cache.send(body) == PromptCacheResult()


def test_below_the_minimum_nothing_is_cached(cache: Cache) -> None:
    small = rag(900)
    assert cache.send(small) == cache.send(small) == PromptCacheResult()
    assert cache.send(rag(1100)).cache_write_tokens > 1024


def test_the_minimum_is_per_model(cache: Cache) -> None:
    assert cache.send(rag(3000, model=HAIKU)) == PromptCacheResult()
    assert cache.send(rag(4200, model=HAIKU)).cache_write_tokens > 4096


def test_entries_expire_after_five_minutes_unless_used(cache: Cache) -> None:
    cache.send(rag(2000))
    cache.now = 299.0
    assert cache.send(rag(2000)).cached_tokens > 0  # refreshes the entry
    cache.now = 299.0 + 299.0
    assert cache.send(rag(2000)).cached_tokens > 0
    cache.now += 300.0
    expired = cache.send(rag(2000))
    assert expired.cached_tokens == 0 and expired.cache_write_tokens > 0


def test_a_1h_breakpoint_lives_an_hour_and_is_billed_as_such(cache: Cache) -> None:
    written = cache.send(rag(2000, ttl="1h"))
    assert written.cache_write_1h_tokens == written.cache_write_tokens > 0
    cache.now = 3599.0
    assert cache.send(rag(2000, ttl="1h")).cached_tokens == written.cache_write_tokens
    cache.now = 3599.0 + 3600.0
    assert cache.send(rag(2000, ttl="1h")).cached_tokens == 0


def test_two_breakpoints_share_the_first_and_write_the_second(cache: Cache) -> None:
    def body(doc: str) -> dict[str, Any]:
        return request(
            SONNET,
            {"role": "system", "content": [block(words(1500), CC)]},
            {"role": "user", "content": [block(words(2000, doc), CC), block("q")]},
        )

    a = cache.send(body("first document "))
    b = cache.send(body("second document "))
    assert a.cached_tokens == 0
    assert 1500 <= b.cached_tokens < 1600  # the system prompt, written by the first
    assert b.cached_tokens + b.cache_write_tokens == a.cache_write_tokens


def test_mixed_ttls_bill_each_segment_by_its_own_breakpoint(cache: Cache) -> None:
    body = request(
        SONNET,
        {"role": "system", "content": [block(words(1500), {**CC, "ttl": "1h"})]},
        {"role": "user", "content": [block(words(2000), CC), block("q")]},
    )
    result = cache.send(body)
    assert 1500 <= result.cache_write_1h_tokens < 1600
    assert result.cache_write_tokens > result.cache_write_1h_tokens + 1999


def test_a_rolling_breakpoint_reads_the_previous_turn_within_the_lookback(cache: Cache) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": words(1200)}]
    for turn in range(4):
        body = request(
            SONNET, *history, {"role": "user", "content": [block(f"question {turn}", CC)]}
        )
        result = cache.send(body)
        if turn:
            assert result.cached_tokens > 1200 and result.cache_write_tokens > 0
        history += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": words(50, f"answer {turn} ")},
        ]


def test_a_read_looks_back_at_most_twenty_blocks(cache: Cache) -> None:
    system = words(1200)
    cache.send(request(SONNET, {"role": "system", "content": [block(system, CC)]}))
    # Later requests move the only breakpoint past n more blocks.
    base = {"role": "system", "content": system}
    filler = [{"role": "user", "content": f"m{i}"} for i in range(25)]
    near = request(SONNET, base, *filler[:19], {"role": "user", "content": [block("x", CC)]})
    far = request(SONNET, base, *filler, {"role": "user", "content": [block("x", CC)]})
    assert cache.send(far).cached_tokens == 0
    assert cache.send(near).cached_tokens > 1200


def test_more_than_four_breakpoints_are_refused(cache: Cache) -> None:
    # Regression: the fifth breakpoint on was quietly dropped; Anthropic answers 400.
    parts = [block(words(300, str(i)), CC) for i in range(5)]
    with pytest.raises(PromptCacheRefusal, match="maximum of 4 blocks"):
        cache.send(request(SONNET, {"role": "user", "content": parts}))
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": CC}
    with pytest.raises(PromptCacheRefusal, match="Found 5"):  # a marked tool counts
        cache.send(request(SONNET, {"role": "user", "content": parts[:4]}, tools=[tool]))
    written = cache.send(request(SONNET, {"role": "user", "content": parts[:4]}))
    assert 1200 <= written.cache_write_tokens < 1300  # through the fourth breakpoint


@pytest.mark.parametrize(
    "first_mark",
    [CC, {**CC, "ttl": "5m"}],
    ids=["no-ttl", "5m"],
)
def test_a_1h_breakpoint_after_a_5m_one_is_refused(
    cache: Cache, first_mark: dict[str, Any]
) -> None:
    # Regression: accepted; Anthropic answers 400 (order: tools, system, messages).
    body = request(
        SONNET,
        {"role": "system", "content": [block(words(1500), first_mark)]},
        {"role": "user", "content": [block(words(2000), {**CC, "ttl": "1h"}), block("q")]},
    )
    with pytest.raises(PromptCacheRefusal, match="1-hour entries must appear before"):
        cache.send(body)
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": first_mark}
    system_1h = request(
        SONNET,
        {"role": "system", "content": [block(words(1500), {**CC, "ttl": "1h"})]},
        {"role": "user", "content": "q"},
        tools=[tool],
    )
    with pytest.raises(PromptCacheRefusal):  # tools come first
        cache.send(system_1h)


def test_a_top_level_cache_control_marks_the_last_block(cache: Cache) -> None:
    body = request(SONNET, {"role": "user", "content": words(2000)}, cache_control=CC)
    assert cache.send(body).cache_write_tokens > 2000
    assert cache.send(body).cached_tokens > 2000


def test_strings_and_blocks_render_alike_and_markers_are_not_content(cache: Cache) -> None:
    doc = words(1500)
    first = request(SONNET, {"role": "user", "content": [block(doc, CC)]})
    assert cache.send(first).cache_write_tokens > 0
    as_string = request(
        SONNET,
        {"role": "user", "content": doc},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [block("more", CC)]},
    )
    assert cache.send(as_string).cached_tokens > 1500


def test_caches_are_per_model(cache: Cache) -> None:
    cache.send(rag(2000))
    assert cache.send(rag(2000, model="anthropic/claude-opus-4.1")).cached_tokens == 0


# --- Automatic caching (openai/*) -----------------------------------------------------------


def test_automatic_caching_from_1024_tokens_in_128_token_steps(cache: Cache) -> None:
    short = request(GPT, {"role": "user", "content": words(900)})
    assert cache.send(short) == cache.send(short) == PromptCacheResult()
    system = {"role": "system", "content": words(2000)}
    first = cache.send(request(GPT, system, {"role": "user", "content": "one"}))
    assert first == PromptCacheResult()  # writes are free and not reported
    second = cache.send(request(GPT, system, {"role": "user", "content": "two"}))
    assert second.cached_tokens >= 1024
    assert second.cached_tokens % 128 == 0
    assert 2004 - 128 < second.cached_tokens <= 2004
    assert second.cache_write_tokens == 0


def test_automatic_entries_expire_and_retention_extends_them(cache: Cache) -> None:
    body = request(GPT, {"role": "user", "content": words(3000)})
    cache.send(body)
    cache.now = 301.0
    assert cache.send(body).cached_tokens == 0
    kept = {**body, "prompt_cache_retention": "24h"}
    cache.send(kept)
    cache.now += 20 * 3600
    assert cache.send(kept).cached_tokens > 2900


def test_models_without_rules_cache_nothing(cache: Cache) -> None:
    body = request("mystery/model", {"role": "user", "content": [block(words(3000), CC)]})
    assert cache.send(body) == cache.send(body) == PromptCacheResult()


def test_rules_can_be_replaced() -> None:
    eager = ProviderPromptCache(rules=[("anthropic/", CacheRules(kind="explicit", min_tokens=1))])
    body = rag(10)
    eager.account(SONNET, body, count_prompt_tokens(body), now=0.0)
    assert eager.account(SONNET, body, count_prompt_tokens(body), now=1.0).cached_tokens > 0
    assert eager.cached_prefixes(now=1.0) == 1
    eager.reset()
    assert eager.cached_prefixes(now=1.0) == 0
    assert "ProviderPromptCache" in repr(eager)


def test_expired_entries_are_swept() -> None:
    cache = ProviderPromptCache()
    for i in range(1100):
        body = rag(1100, model=SONNET)
        body["messages"][1]["content"][0]["text"] = (
            f"{i} " + body["messages"][1]["content"][0]["text"][: 4400 - 8]
        )
        cache.account(SONNET, body, count_prompt_tokens(body), now=float(i * 400))
    assert cache.cached_prefixes(now=1100 * 400.0) <= 1
    assert len(cache._entries) < 1100


# --- Latency ----------------------------------------------------------------------------------


def test_a_cached_prefix_is_answered_faster() -> None:
    endpoint = FakeEndpoint("a", latency=1.0)
    assert endpoint.latency_for(PromptCacheResult(), 1000) == 1.0
    assert endpoint.latency_for(PromptCacheResult(cache_write_tokens=900), 1000) == 1.0
    half = endpoint.latency_for(PromptCacheResult(cached_tokens=500), 1000)
    assert half == pytest.approx(1.0 - CACHED_LATENCY_SAVING / 2)
    assert cached_latency(1.0, PromptCacheResult(cached_tokens=1000), 1000) == pytest.approx(0.2)
    assert cached_latency(1.0, PromptCacheResult(), 0) == 1.0


# --- Through the gateway ------------------------------------------------------------------------


@pytest.fixture
async def stopped_clock_gateway() -> AsyncIterator[FakeGateway]:
    """Endpoints "a" and "b" with prompt caches, on a clock that never moves: no entry
    expires during the test."""
    async with FakeGateway(
        endpoints=("a", "b"), prompt_cache=ProviderPromptCache, clock=FakeClock(1_700_000_000.0)
    ) as gw:
        yield gw


async def post(gw: FakeGateway, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.base_url(endpoint)}/chat/completions", data=orjson.dumps(body)) as r,
    ):
        assert r.status == 200, await r.text()
        reply: dict[str, Any] = orjson.loads(await r.read())
        return reply


async def test_each_endpoint_has_its_own_cache_and_usage_prices_it(
    stopped_clock_gateway: FakeGateway,
) -> None:
    gateway = stopped_clock_gateway
    body = rag(3000)
    cold = (await post(gateway, "a", body))["usage"]
    warm = (await post(gateway, "a", {**body, "max_tokens": 7}))["usage"]
    other = (await post(gateway, "b", body))["usage"]
    assert cold["prompt_tokens_details"]["cache_write_tokens"] > 3000
    assert warm["prompt_tokens_details"]["cached_tokens"] > 3000
    assert other["prompt_tokens_details"]["cached_tokens"] == 0
    price = {m.id: m.price for m in DEFAULT_MODELS}[SONNET]
    assert price.cache_read is not None
    uncached_in = cold["prompt_tokens"] * price.prompt / 1e6
    assert warm["cost"] < uncached_in < cold["cost"]  # reads at 0.1x, writes at 1.25x
    # Down and up again: a provider outage does not flush its cache here.
    gateway.endpoint("a").take_down()
    gateway.endpoint("a").bring_up()
    again = (await post(gateway, "a", {**body, "max_tokens": 9}))["usage"]
    assert again["prompt_tokens_details"]["cached_tokens"] > 3000
    gateway.reset()
    reset = (await post(gateway, "a", body))["usage"]
    assert reset["prompt_tokens_details"]["cached_tokens"] == 0


async def test_the_gateway_answers_refused_breakpoints_400_as_anthropic_does(
    stopped_clock_gateway: FakeGateway,
) -> None:
    gateway = stopped_clock_gateway
    five_parts = [block(f"part {i}", CC) for i in range(5)]
    system_5m = [block(words(1500), CC)]
    question_1h = [block("q", {**CC, "ttl": "1h"})]
    refused = [
        ("maximum of 4 blocks", [], [{"role": "user", "content": five_parts}]),
        ("1-hour entries", system_5m, [{"role": "user", "content": question_1h}]),
    ]
    async with aiohttp.ClientSession() as session:
        for message, system, turns in refused:
            chat = request(
                SONNET, *([{"role": "system", "content": system}] if system else []), *turns
            )
            async with session.post(
                f"{gateway.base_url('a')}/chat/completions", data=orjson.dumps(chat)
            ) as r:
                assert r.status == 400
                assert message in (await r.json())["error"]["message"]
            native = {"model": SONNET, "max_tokens": 16, "system": system, "messages": turns}
            async with session.post(
                f"{gateway.url}/a/anthropic/v1/messages", data=orjson.dumps(native)
            ) as r:
                assert r.status == 400
                assert message in (await r.json())["error"]["message"]
    assert gateway.endpoint("a").completions == 0

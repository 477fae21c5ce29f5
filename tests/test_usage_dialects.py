"""Every provider's usage dialect → one Usage whose buckets add up.

Payloads are shaped as the providers document them. Each way peers got usage wrong is a
regression test here: Anthropic cache writes billed twice, Gemini cache hits counted
twice, OpenRouter's cache_write_tokens ignored, streamed usage differing from unstreamed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.base import CacheEntry, EntryCodec
from limpet.models import Usage
from limpet.providers.pricing import ModelPrices, completion_cost
from limpet.providers.usage import (
    StreamUsage,
    UsageDialect,
    detect_dialect,
    normalize_usage,
    parse_usage,
    raw_usage,
    reported_cost,
    response_usage,
    with_write_ttl,
)
from limpet.testing.wire import Answer

OPENROUTER = {
    "prompt_tokens": 2000,
    "completion_tokens": 50,
    "total_tokens": 2050,
    "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 300, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 20},
    "cost": 0.0042,
    "is_byok": False,
    "cost_details": {"upstream_inference_cost": None},
}
ANTHROPIC = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 5000,
    "cache_read_input_tokens": 10000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 4000},
    "output_tokens": 393,
    "service_tier": "standard",
}
DEEPSEEK = {
    "prompt_tokens": 1200,
    "completion_tokens": 50,
    "total_tokens": 1250,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "prompt_cache_hit_tokens": 1024,
    "prompt_cache_miss_tokens": 176,
    "completion_tokens_details": {"reasoning_tokens": 20},
}
GEMINI = {
    "promptTokenCount": 10000,
    "cachedContentTokenCount": 8000,
    "candidatesTokenCount": 500,
    "thoughtsTokenCount": 300,
    "totalTokenCount": 10800,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10000}],
    "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 8000}],
}
XAI = {
    "prompt_tokens": 32,
    "completion_tokens": 9,
    "total_tokens": 241,
    "prompt_tokens_details": {"text_tokens": 32, "audio_tokens": 0, "cached_tokens": 6},
    "completion_tokens_details": {"reasoning_tokens": 200, "audio_tokens": 0},
    "num_sources_used": 0,
}
GROQ = {
    "queue_time": 0.02,
    "prompt_tokens": 2000,
    "prompt_time": 0.1,
    "completion_tokens": 100,
    "completion_time": 0.4,
    "total_tokens": 2100,
    "total_time": 0.5,
    "prompt_tokens_details": {"cached_tokens": 1536},
}
RESPONSES = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1024},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 2300,
}


@pytest.mark.parametrize(
    ("payload", "dialect", "expected"),
    [
        (OPENROUTER, UsageDialect.OPENAI, Usage(2000, 50, 1500, 300, 20)),
        (ANTHROPIC, UsageDialect.ANTHROPIC, Usage(15021, 393, 10000, 5000, 0, 4000)),
        (DEEPSEEK, UsageDialect.DEEPSEEK, Usage(1200, 50, 1024, 0, 20)),
        (GEMINI, UsageDialect.GEMINI, Usage(10000, 800, 8000, 0, 300)),
        (XAI, UsageDialect.OPENAI, Usage(32, 209, 6, 0, 200)),
        (GROQ, UsageDialect.OPENAI, Usage(2000, 100, 1536, 0, 0)),
        (RESPONSES, UsageDialect.OPENAI_RESPONSES, Usage(2000, 300, 1024, 0, 100)),
    ],
    ids=["openrouter", "anthropic", "deepseek", "gemini", "xai", "groq", "responses"],
)
def test_every_dialect(payload: dict[str, Any], dialect: UsageDialect, expected: Usage) -> None:
    assert detect_dialect(payload) is dialect
    assert normalize_usage(payload) == expected
    assert normalize_usage(payload, dialect) == expected
    assert parse_usage(payload) == expected
    assert expected.uncached_tokens + expected.cached_tokens + expected.cache_write_tokens == (
        expected.prompt_tokens
    )


def test_openrouter_cache_writes_are_their_own_bucket() -> None:
    # Regression: peers ignored cache_write_tokens, billing writes as plain input.
    usage = normalize_usage(OPENROUTER)
    assert (usage.uncached_tokens, usage.cached_tokens, usage.cache_write_tokens) == (
        200,
        1500,
        300,
    )


def test_anthropic_cache_writes_are_counted_once() -> None:
    # Regression: peers added cache_creation_input_tokens to the input twice (once as
    # input, once as writes). input_tokens excludes reads and writes: it IS the uncached part.
    usage = normalize_usage(ANTHROPIC)
    assert usage.uncached_tokens == ANTHROPIC["input_tokens"]
    assert usage.cache_write_tokens == 5000
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (1000, 4000)
    assert usage.prompt_tokens == 21 + 10000 + 5000


def test_anthropic_write_split_without_the_total() -> None:
    usage = normalize_usage(
        {"input_tokens": 5, "cache_creation": {"ephemeral_1h_input_tokens": 70}, "output_tokens": 1}
    )
    assert usage == Usage(75, 1, 0, 70, 0, 70)


def test_gemini_cache_hits_are_counted_once() -> None:
    # Regression: promptTokenCount already includes cachedContentTokenCount; peers added
    # the two and billed every cache hit twice.
    usage = normalize_usage(GEMINI)
    assert usage.prompt_tokens == GEMINI["promptTokenCount"]
    assert usage.uncached_tokens == 2000


def test_gemini_tool_use_prompt_and_missing_candidates() -> None:
    usage = normalize_usage(
        {"promptTokenCount": 100, "toolUsePromptTokenCount": 40, "totalTokenCount": 140}
    )
    assert usage == Usage(140, 0, 0, 0, 0)


def test_deepseek_without_prompt_tokens_adds_hit_and_miss() -> None:
    usage = normalize_usage({"prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36})
    assert (usage.prompt_tokens, usage.cached_tokens) == (100, 64)


# LiteLLM's documented usage: OpenAI's dialect with Anthropic's cache fields added.
LITELLM = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920},
    "completion_tokens_details": {"reasoning_tokens": 0},
    "cache_creation_input_tokens": 0,
}


def test_litellm_usage_is_read_as_openai_and_keeps_every_count() -> None:
    # Regression: any Anthropic cache field selected Anthropic's reader, which found no
    # input_tokens nor output_tokens: all zeros, a known $0.
    assert detect_dialect(LITELLM) is UsageDialect.OPENAI
    usage = normalize_usage(LITELLM)
    assert usage == Usage(2006, 300, 1920, 0, 0)
    prices = ModelPrices.per_million(prompt=3, completion=15, cache_read=0.3, cache_write=3.75)
    cost = completion_cost(usage, prices)
    assert cost is not None and cost.usd == pytest.approx((86 * 3 + 1920 * 0.3 + 300 * 15) / 1e6)


def test_anthropic_cache_fields_fill_in_what_openai_fields_leave_out() -> None:
    mixed = {
        "prompt_tokens": 3000,
        "completion_tokens": 50,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 1500,
        "cache_creation": {"ephemeral_1h_input_tokens": 1500},
    }
    assert normalize_usage(mixed) == Usage(3000, 50, 1000, 1500, 0, 1500)
    # OpenAI's own fields, when present, are the ones read.
    both = {**mixed, "prompt_tokens_details": {"cached_tokens": 800, "cache_write_tokens": 200}}
    assert normalize_usage(both) == Usage(3000, 50, 800, 200, 0, 200)


def test_openai_reasoning_stays_inside_completion_tokens() -> None:
    usage = normalize_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 300,
            "total_tokens": 310,
            "completion_tokens_details": {"reasoning_tokens": 200},
        }
    )
    assert (usage.completion_tokens, usage.reasoning_tokens) == (300, 200)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": OPENROUTER, "choices": []}, Usage(2000, 50, 1500, 300, 20)),
        ({"type": "message", "usage": ANTHROPIC}, Usage(15021, 393, 10000, 5000, 0, 4000)),
        ({"candidates": [], "usageMetadata": GEMINI}, Usage(10000, 800, 8000, 0, 300)),
        ({"x_groq": {"id": "req_1", "usage": GROQ}}, Usage(2000, 100, 1536, 0, 0)),
        (
            {"type": "response.completed", "response": {"usage": RESPONSES}},
            Usage(2000, 300, 1024, 0, 100),
        ),
        ({"choices": [], "usage": None}, Usage(reported=False)),
        ("not a body", Usage(reported=False)),
    ],
)
def test_usage_of_whole_responses(body: object, expected: Usage) -> None:
    assert response_usage(body) == expected


def test_a_streamed_openrouter_answer_reports_the_same_usage() -> None:
    # Regression: streamed usage must normalise exactly as the unstreamed body's.
    answer = Answer(
        id="gen-1",
        created=0,
        model="anthropic/claude-sonnet-4.6",
        provider="a",
        content="Hello there, general limpet.",
        finish_reason="stop",
        usage=OPENROUTER,
    )
    whole = response_usage(answer.completion())
    final = answer.stream()[-1]
    assert final["choices"] == []
    assert response_usage(final) == whole
    acc = StreamUsage()
    for chunk in answer.stream():
        acc.feed({**chunk, "usage": None} if "usage" not in chunk else chunk)
    assert acc.usage == whole
    assert reported_cost(acc.raw) == reported_cost(answer.completion()["usage"])


def test_xai_usage_in_a_chunk_before_the_last_is_kept() -> None:
    acc = StreamUsage()
    for chunk in [
        {"choices": [{"delta": {"content": "hi"}}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": XAI},
        {"choices": [], "usage": None},
    ]:
        acc.feed(chunk)
    assert acc.usage == normalize_usage(XAI)


def test_a_streamed_anthropic_message_reports_the_same_usage() -> None:
    # message_start carries input and cache counts with a placeholder output count;
    # message_delta carries the cumulative output count. Adding them would be wrong.
    start_usage = {**ANTHROPIC, "output_tokens": 1}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1", "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 393},
        },
        {"type": "message_stop"},
    ]
    acc = StreamUsage()
    for event in events:
        acc.feed(event)
    assert acc.usage == normalize_usage(ANTHROPIC)
    assert acc.usage.completion_tokens == 393  # not 394


def test_a_streamed_gemini_answer_reports_the_same_usage() -> None:
    # Every Gemini chunk carries cumulative usageMetadata; summing them double counts.
    chunks = [
        {"candidates": [], "usageMetadata": {**GEMINI, "candidatesTokenCount": n}}
        for n in (100, 300, 500)
    ]
    acc = StreamUsage()
    for chunk in chunks:
        acc.feed(chunk)
    assert acc.usage == normalize_usage(GEMINI)
    assert StreamUsage().usage == Usage(reported=False)
    assert StreamUsage().raw is None


def test_reported_cost_adds_the_upstream_charge_only_with_byok() -> None:
    assert reported_cost(OPENROUTER) == 0.0042
    byok = {"cost": 0.95, "is_byok": True, "cost_details": {"upstream_inference_cost": 19}}
    assert reported_cost(byok) == 19.95
    assert reported_cost({**byok, "is_byok": False}) == 0.95
    assert reported_cost({"is_byok": True, "cost_details": {"upstream_inference_cost": 1}}) is None


def test_raw_usage_finds_nothing_in_odd_bodies() -> None:
    assert raw_usage({"message": {"usage": "none"}}) is None
    assert raw_usage(None) is None


_counts = st.one_of(
    st.integers(min_value=-10, max_value=10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.booleans(),
)
_payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": _counts,
            "completion_tokens": _counts,
            "total_tokens": _counts,
            "prompt_tokens_details": st.fixed_dictionaries(
                {}, optional={"cached_tokens": _counts, "cache_write_tokens": _counts}
            ),
            "completion_tokens_details": st.fixed_dictionaries(
                {}, optional={"reasoning_tokens": _counts}
            ),
            "prompt_cache_hit_tokens": _counts,
        },
    ),
    st.fixed_dictionaries(
        {"input_tokens": _counts},
        optional={
            "output_tokens": _counts,
            "cache_read_input_tokens": _counts,
            "cache_creation_input_tokens": _counts,
            "cache_creation": st.fixed_dictionaries(
                {},
                optional={
                    "ephemeral_5m_input_tokens": _counts,
                    "ephemeral_1h_input_tokens": _counts,
                },
            ),
        },
    ),
    st.fixed_dictionaries(
        {"promptTokenCount": _counts},
        optional={
            "cachedContentTokenCount": _counts,
            "candidatesTokenCount": _counts,
            "thoughtsTokenCount": _counts,
            "toolUsePromptTokenCount": _counts,
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(_payloads)
def test_buckets_always_add_up_and_are_never_negative(payload: dict[str, Any]) -> None:
    usage = normalize_usage(payload)
    buckets = (
        usage.uncached_tokens,
        usage.cached_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.completion_tokens - usage.reasoning_tokens,
        usage.reasoning_tokens,
    )
    assert min(buckets) >= 0
    assert usage.uncached_tokens + usage.cached_tokens + usage.cache_write_tokens == (
        usage.prompt_tokens
    )


_count_values = st.one_of(st.none(), st.integers(min_value=0, max_value=10**7))
_mixed_payloads = st.fixed_dictionaries(
    {
        "prompt_tokens": st.integers(min_value=0, max_value=10**7),
        "completion_tokens": st.integers(min_value=0, max_value=10**7),
    },
    optional={
        "prompt_tokens_details": st.fixed_dictionaries(
            {}, optional={"cached_tokens": _count_values, "cache_write_tokens": _count_values}
        ),
        "total_tokens": st.integers(min_value=0, max_value=10**7),
        "cache_read_input_tokens": _count_values,
        "cache_creation_input_tokens": _count_values,
        "cache_creation": st.fixed_dictionaries(
            {},
            optional={
                "ephemeral_5m_input_tokens": _count_values,
                "ephemeral_1h_input_tokens": _count_values,
            },
        ),
        "input_tokens": _count_values,
        "output_tokens": _count_values,
        "input_tokens_details": st.fixed_dictionaries(
            {}, optional={"cached_tokens": _count_values}
        ),
        "cost": st.floats(min_value=0, max_value=10),
    },
)


def _first_count(*values: object) -> int:
    return next((v for v in values if isinstance(v, int)), 0)


@settings(max_examples=300, deadline=None)
@given(_mixed_payloads)
def test_a_mix_of_dialects_keeps_every_reported_count(payload: dict[str, Any]) -> None:
    # OpenAI's prompt_tokens with any of Anthropic's or the Responses API's fields (as
    # LiteLLM and other proxies send): the prompt and completion reported are the totals,
    # cache reads and writes are OpenAI's fields or else Anthropic's, and the buckets
    # always add up to the prompt.
    usage = normalize_usage(payload)
    details = payload.get("prompt_tokens_details", {})
    prompt = payload["prompt_tokens"]
    cached = min(
        prompt, _first_count(details.get("cached_tokens"), payload.get("cache_read_input_tokens"))
    )
    written = min(
        prompt - cached,
        _first_count(details.get("cache_write_tokens"), payload.get("cache_creation_input_tokens")),
    )
    assert usage.reported
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        prompt,
        payload["completion_tokens"],
    )
    assert (usage.cached_tokens, usage.cache_write_tokens) == (cached, written)
    assert usage.uncached_tokens + usage.cached_tokens + usage.cache_write_tokens == prompt
    assert min(usage.uncached_tokens, usage.cache_write_5m_tokens) >= 0


def test_1h_writes_add_and_survive_the_entry_codec() -> None:
    usage = Usage(100, 5, 10, 60, 2, 40)
    assert usage + usage == Usage(200, 10, 20, 120, 4, 80)
    assert usage.cache_write_5m_tokens == 20
    entry = CacheEntry({"choices": [{"message": {}}]}, usage, 0.5, "a", 1.0, 2.0)
    assert EntryCodec().decode("k", EntryCodec().encode("k", entry)).usage == usage


def test_writes_are_attributed_to_the_one_ttl_every_mark_asked_for() -> None:
    # OpenRouter reports one cache_write_tokens total; 1 h writes cost more.
    usage = normalize_usage(OPENROUTER)
    assert with_write_ttl(usage, "1h") == Usage(2000, 50, 1500, 300, 20, 300)
    assert with_write_ttl(usage, "5m") is usage
    assert with_write_ttl(usage, None) is usage
    split = normalize_usage(ANTHROPIC)
    assert with_write_ttl(split, "1h") is split  # the dialect said already


_USAGE_KEYS = st.sampled_from(
    [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "prompt_cache_hit_tokens",
        "promptTokenCount",
        "cost",
        "prompt_tokens_details",
    ]
)
_USAGE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.fixed_dictionaries({}, optional={"cached_tokens": st.integers(-5, 10**6)}),
)


@settings(max_examples=500)
@given(st.dictionaries(_USAGE_KEYS, _USAGE_VALUES, max_size=6))
def test_the_openai_fast_path_reads_as_the_dialect_detection_does(usage: dict[str, Any]) -> None:
    # normalize_usage reads the common OpenAI answer without its general checks: it must
    # give what those checks give, for any usage object.
    kind = detect_dialect(usage)
    assert normalize_usage(usage) == normalize_usage(usage, kind)

"""Usage in the OpenAI/OpenRouter dialect: buckets that add up, never an error; and usage
never reported is a cost unknown (None), never $0, on every path."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.base import CacheEntry
from limpet.models import CacheStatus, Completion, Cost, Usage
from limpet.observe.stats import Stats
from limpet.pipeline.completions import completion_of
from limpet.providers.pricing import ModelPrices, completion_cost
from limpet.providers.usage import (
    MAX_TOKENS,
    UsageDialect,
    _count,
    _dollars,
    detect_dialect,
    has_usage,
    normalize_usage,
    parse_usage,
    reported_cost,
)

DIALECT_KEYS = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "totalTokenCount",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
]


def test_openrouter_usage_with_cache_reads_and_writes() -> None:
    usage = parse_usage(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 50,
            "total_tokens": 2050,
            "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 300},
            "completion_tokens_details": {"reasoning_tokens": 20},
            "cost": 0.0042,
        }
    )
    assert usage == Usage(
        prompt_tokens=2000,
        completion_tokens=50,
        cached_tokens=1500,
        cache_write_tokens=300,
        reasoning_tokens=20,
    )
    # Regression (peers ignored OpenRouter's cache_write_tokens): writes are their own bucket.
    assert usage.uncached_tokens == 200
    assert usage.uncached_tokens + usage.cached_tokens + usage.cache_write_tokens == 2000
    assert usage.total_tokens == 2050


@pytest.mark.parametrize(
    "payload",
    [None, {}, "usage", [], {"prompt_tokens": None}, {"prompt_tokens": "12"}],
)
def test_missing_or_odd_usage_is_all_zero_and_not_reported(payload: Any) -> None:
    usage = parse_usage(payload)
    assert usage == Usage(reported=False)
    assert not usage.reported


@pytest.mark.parametrize(
    "payload",
    [
        {"total_tokens": 500},
        {"completion_tokens": 3},
        {"prompt_tokens": "1500", "completion_tokens": 10},
        {"prompt_tokens": -5, "completion_tokens": 10},
        {"prompt_tokens": float("nan"), "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"output_tokens": 42},  # an Anthropic message_delta alone
        {"candidatesTokenCount": 20, "totalTokenCount": 20},
        {"prompt_cache_hit_tokens": 64, "completion_tokens": 2},
        {"cost": "0.5", "total_tokens": 10},
    ],
    ids=[
        "total-only",
        "completion-only",
        "string-prompt",
        "negative-prompt",
        "nan-prompt",
        "bool-prompt",
        "anthropic-output-only",
        "gemini-no-prompt",
        "deepseek-hit-only",
        "string-cost",
    ],
)
def test_a_usage_without_a_usable_prompt_count_is_a_cost_unknown(payload: Any) -> None:
    # Regression: any number counted as reported, so these were priced as a known $0
    # (or only their completion tokens).
    usage = parse_usage(payload)
    assert usage == Usage(reported=False)
    assert not has_usage(payload)
    assert completion_cost(usage, PRICES, reported_cost(payload)) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"prompt_tokens": 0, "completion_tokens": 0},
        {"prompt_tokens": 1500.0},
        {"input_tokens": 0, "output_tokens": 0},
        {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}},
        {"promptTokenCount": 10},
        {"prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 0},
        {"cost": 0.25},
        {"cost": 0.25, "total_tokens": 10},
    ],
)
def test_a_usage_with_a_prompt_count_or_a_cost_is_reported(payload: Any) -> None:
    assert parse_usage(payload).reported
    assert has_usage(payload)


def test_inconsistent_numbers_are_clamped_so_buckets_still_add_up() -> None:
    usage = parse_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 90, "cache_write_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert (usage.cached_tokens, usage.cache_write_tokens, usage.uncached_tokens) == (90, 10, 0)
    assert usage.reasoning_tokens == 5


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -5, True])
def test_non_finite_or_negative_counts_are_zero(bad: object) -> None:
    assert parse_usage({"prompt_tokens": bad}).prompt_tokens == 0


def test_reported_cost() -> None:
    assert reported_cost({"cost": 0.5}) == 0.5
    assert reported_cost({"cost": 0}) == 0.0
    for bad in (None, {}, {"cost": "0.5"}, {"cost": -1}, {"cost": float("inf")}, {"cost": True}):
        assert reported_cost(bad) is None


@pytest.mark.parametrize("dialect", [None, *UsageDialect])
def test_an_int_wider_than_a_float_is_no_amount_in_any_dialect(
    dialect: UsageDialect | None,
) -> None:
    # JSON's ints have no bound (the stdlib's parser reads what orjson refuses): float()
    # of one raised OverflowError, where usage functions never raise.
    wide = 10**309
    assert reported_cost({"cost": wide}) is None
    assert (
        reported_cost(
            {"cost": 5, "is_byok": True, "cost_details": {"upstream_inference_cost": wide}}
        )
        == 5.0
    )
    for key in ("prompt_tokens", "input_tokens", "promptTokenCount", "prompt_cache_hit_tokens"):
        payload = {key: wide, "completion_tokens": 1, "prompt_cache_miss_tokens": wide}
        assert normalize_usage(payload, dialect) == Usage(reported=False)
        assert not has_usage(payload, dialect)


def test_usages_add() -> None:
    a = Usage(prompt_tokens=10, completion_tokens=2, cached_tokens=4)
    assert a + a == Usage(prompt_tokens=20, completion_tokens=4, cached_tokens=8)


def test_an_unreported_usage_taints_a_sum() -> None:
    known = Usage(prompt_tokens=10)
    assert (known + known).reported
    assert not (known + Usage(reported=False)).reported
    assert (known + Usage(reported=False)).prompt_tokens == 10


PRICES = ModelPrices(prompt=Decimal("0.000003"), completion=Decimal("0.000015"))


def test_no_usage_is_no_cost_even_with_prices() -> None:
    # Pricing its zeros would claim $0; the cost is unknown.
    assert completion_cost(parse_usage(None), PRICES) is None
    assert completion_cost(parse_usage({}), PRICES, reported_cost({})) is None
    priced = completion_cost(parse_usage({"prompt_tokens": 1000}), PRICES)
    assert priced == Cost(0.003, 0.0)


def entry(body: dict[str, Any], usage: Usage, cost_usd: float | None) -> CacheEntry:
    return CacheEntry(body, usage, cost_usd, "a", 0.0, 60.0)


ANSWER = {"model": "m", "choices": [{"index": 0, "message": {"role": "assistant"}}]}


@pytest.mark.parametrize("status", list(CacheStatus))
def test_an_entry_of_unknown_cost_is_served_with_no_cost(status: CacheStatus) -> None:
    # The codec keeps counts, not the flag: a decoded usage reads as reported.
    served = completion_of(entry(ANSWER, Usage(), None), status, "k")
    assert served.cost is None
    assert not served.usage.reported


def test_an_unpriced_entry_with_usage_keeps_its_usage_reported() -> None:
    body = {**ANSWER, "usage": {"prompt_tokens": 7}}
    served = completion_of(entry(body, Usage(prompt_tokens=7), None), CacheStatus.HIT, "k")
    assert served.cost is None and served.usage.reported


def test_a_hit_of_a_priced_entry_cost_nothing_and_saved_its_cost() -> None:
    body = {**ANSWER, "usage": {"prompt_tokens": 7}}
    priced = entry(body, Usage(prompt_tokens=7), 0.25)
    assert completion_of(priced, CacheStatus.HIT, "k").cost == Cost(0.0, 0.25)
    assert completion_of(priced, CacheStatus.MISS, "k").cost == Cost(0.25)


def test_stats_count_calls_of_unknown_cost_as_unpriced() -> None:
    stats = Stats()
    for status, cost in [
        (CacheStatus.MISS, None),
        (CacheStatus.HIT, None),
        (CacheStatus.MISS, Cost(0.5, 0.1)),
        (CacheStatus.HIT, Cost(0.0, 0.5)),
    ]:
        stats.record(Completion(ANSWER, "m", Usage(), cost, status, "a", "k"))
    stats.spent(Usage(), Cost(0.5))  # a miss's spend is told as its answer comes
    stats.spent(Usage(), None)
    assert (stats.unpriced, stats.misses, stats.hits) == (2, 2, 2)
    assert (stats.cost_usd, stats.saved_usd) == (0.5, 0.6)


@given(
    st.one_of(
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.none(),
        st.text(max_size=3),
    )
)
def test_counts_and_dollars_read_a_value_as_the_general_rule_does(value: object) -> None:
    """The int fast paths of ``_count`` and ``_dollars`` answer as the general rule."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    finite = number and math.isfinite(value)  # type: ignore[arg-type]
    assert _count(value) == (max(int(value), 0) if finite else 0)  # type: ignore[call-overload]
    expected = float(value) if finite and value >= 0 else None  # type: ignore[operator, arg-type]
    assert _dollars(value) == expected


@given(st.dictionaries(st.sampled_from(DIALECT_KEYS), st.integers(0, 10**6), max_size=6))
def test_the_dialect_is_judged_by_the_fields_present(usage: dict[str, int]) -> None:
    keys = set(usage)
    dialect = detect_dialect(usage)
    if keys & {
        "promptTokenCount",
        "candidatesTokenCount",
        "cachedContentTokenCount",
        "totalTokenCount",
    }:
        assert dialect is UsageDialect.GEMINI
    elif "prompt_tokens" not in keys and keys & {
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
    }:
        assert dialect is UsageDialect.ANTHROPIC
    elif keys & {"prompt_cache_hit_tokens", "prompt_cache_miss_tokens"}:
        assert dialect is UsageDialect.DEEPSEEK
    elif "prompt_tokens" in keys:
        # Anthropic's cache fields beside prompt_tokens (LiteLLM) are still OpenAI's dialect.
        assert dialect is UsageDialect.OPENAI


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_a_count_past_max_tokens_is_no_count_and_the_usage_does_not_report(field: str) -> None:
    at_most = {"prompt_tokens": 10, "completion_tokens": 10, field: MAX_TOKENS}
    assert parse_usage(at_most).reported
    past = {**at_most, field: MAX_TOKENS + 1}
    assert parse_usage(past) == Usage(reported=False)
    assert parse_usage({**at_most, field: 1e20}) == Usage(reported=False)

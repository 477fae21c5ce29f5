"""Usage in the OpenAI/OpenRouter dialect: buckets that add up, never an error."""

from __future__ import annotations

from typing import Any

import pytest

from limpet.models import Usage
from limpet.usage import parse_usage, reported_cost


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
    [{"prompt_tokens": 0, "completion_tokens": 0}, {"completion_tokens": 3}, {"cost": 0.25}],
)
def test_a_usage_with_any_number_is_reported(payload: Any) -> None:
    assert parse_usage(payload).reported


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


def test_usages_add() -> None:
    a = Usage(prompt_tokens=10, completion_tokens=2, cached_tokens=4)
    assert a + a == Usage(prompt_tokens=20, completion_tokens=4, cached_tokens=8)

"""Audio tokens: read from every dialect that reports them, and priced at the model's
audio rates where it has them (as text where it has none). They were priced as text
whenever the gateway reported no ``usage.cost``: a Gemini 2.5 Flash call with 90,000
audio tokens cost three times what limpet said."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.models import Usage
from limpet.providers.pricing import (
    ModelPrices,
    PriceTable,
    completion_cost,
    cost_usd,
    prompt_cache_savings,
)
from limpet.providers.prompt_cache import CacheCapability
from limpet.providers.usage import StreamUsage, normalize_usage

# Gemini 2.5 Flash as genai-prices lists it: text $0.30/M, audio $1.00/M, cached text
# $0.03/M, cached audio $0.10/M, output $2.50/M.
FLASH = ModelPrices.per_million(
    prompt=0.3, completion=2.5, cache_read=0.03, prompt_audio=1, cache_read_audio=0.1
)
# OpenAI's gpt-audio: text $2.50/M in and $10/M out, audio $32/M in and $64/M out.
GPT_AUDIO = ModelPrices.per_million(prompt=2.5, completion=10, prompt_audio=32, completion_audio=64)

AUDIO_CALL: dict[str, Any] = {
    "prompt_tokens": 100_000,
    "completion_tokens": 1_000,
    "total_tokens": 101_000,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 90_000, "text_tokens": 10_000},
}


def test_the_openai_dialect_reads_audio_tokens() -> None:
    usage = normalize_usage(
        {
            "prompt_tokens": 500,
            "completion_tokens": 300,
            "prompt_tokens_details": {"audio_tokens": 400, "cached_tokens": 100},
            "completion_tokens_details": {"audio_tokens": 250, "reasoning_tokens": 0},
        }
    )
    assert (usage.prompt_audio_tokens, usage.cached_audio_tokens) == (400, 0)
    assert usage.completion_audio_tokens == 250
    assert (usage.prompt_tokens, usage.completion_tokens) == (500, 300)


def test_the_gemini_dialect_reads_audio_by_modality() -> None:
    usage = normalize_usage(
        {
            "promptTokenCount": 1_000,
            "cachedContentTokenCount": 300,
            "candidatesTokenCount": 50,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 200},
                {"modality": "AUDIO", "tokenCount": 800},
            ],
            "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 250}],
            "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}],
        }
    )
    assert (usage.prompt_tokens, usage.cached_tokens) == (1_000, 300)
    assert (usage.prompt_audio_tokens, usage.cached_audio_tokens) == (800, 250)
    assert usage.completion_audio_tokens == 40


def test_audio_counts_are_clamped_to_their_totals() -> None:
    usage = normalize_usage(
        {
            "promptTokenCount": 100,
            "cachedContentTokenCount": 10,
            "candidatesTokenCount": 5,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 900}],
            "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 50}, "junk"],
            "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": -3}],
        }
    )
    assert (usage.prompt_audio_tokens, usage.cached_audio_tokens) == (100, 10)
    assert usage.completion_audio_tokens == 0


def test_a_stream_reports_the_audio_of_its_last_usage() -> None:
    acc = StreamUsage()
    acc.feed({"choices": [{"delta": {"content": "hi"}}]})
    acc.feed({"choices": [], "usage": AUDIO_CALL})
    assert acc.usage == normalize_usage(AUDIO_CALL)


def test_the_repro_audio_input_at_its_own_rate() -> None:
    """/tmp/repros/cost/audio_tokens.py: 10,000 text x $0.30/M + 90,000 audio x $1/M +
    1,000 out x $2.50/M = $0.0955, not $0.0325 (every input token at the text rate)."""
    hand = 10_000 * 0.30e-6 + 90_000 * 1.00e-6 + 1_000 * 2.50e-6
    assert hand == pytest.approx(0.0955)
    cost = completion_cost(normalize_usage(AUDIO_CALL), FLASH)
    assert cost is not None and cost.usd == pytest.approx(hand)


def test_the_genai_prices_fallback_prices_audio_as_genai_prices_does() -> None:
    from genai_prices import Usage as Counted
    from genai_prices import calc_price

    prices = PriceTable(None).get("google/gemini-2.5-flash")
    assert prices is not None and prices.source == "genai-prices"
    assert prices.prompt_audio == Decimal("0.000001")
    assert prices.cache_read_audio == Decimal("1E-7")
    reference = calc_price(
        Counted(input_tokens=100_000, input_audio_tokens=90_000, output_tokens=1_000),
        "gemini-2.5-flash",
        provider_id="google",
    )
    usd = cost_usd(normalize_usage(AUDIO_CALL), prices)
    assert usd == pytest.approx(0.0955)
    assert usd == pytest.approx(float(reference.total_price))


def test_audio_output_at_its_own_rate() -> None:
    from genai_prices import Usage as Counted
    from genai_prices import calc_price

    usage = normalize_usage(
        {
            "prompt_tokens": 2_000,
            "completion_tokens": 1_500,
            "prompt_tokens_details": {"audio_tokens": 1_200},
            "completion_tokens_details": {"audio_tokens": 1_000},
        }
    )
    # 800 text x $2.50/M + 1,200 audio x $32/M + 500 text x $10/M + 1,000 audio x $64/M
    hand = 800 * 2.5e-6 + 1_200 * 32e-6 + 500 * 10e-6 + 1_000 * 64e-6
    assert cost_usd(usage, GPT_AUDIO) == pytest.approx(hand)
    fallback = PriceTable(None).get("openai/gpt-audio")
    assert fallback is not None and fallback.completion_audio == Decimal("0.000064")
    reference = calc_price(
        Counted(
            input_tokens=2_000,
            input_audio_tokens=1_200,
            output_tokens=1_500,
            output_audio_tokens=1_000,
        ),
        "gpt-audio",
        provider_id="openai",
    )
    assert cost_usd(usage, fallback) == pytest.approx(float(reference.total_price))
    assert float(reference.total_price) == pytest.approx(hand)


def test_an_override_with_an_audio_price() -> None:
    table = PriceTable(None)
    table.override("acme/voice", ModelPrices.per_million(prompt=1, completion=4, prompt_audio=8))
    prices = table.get("acme/voice")
    assert prices is not None and prices.source == "override"
    usage = Usage(prompt_tokens=1_000, completion_tokens=100, prompt_audio_tokens=600)
    # 400 text x $1/M + 600 audio x $8/M + 100 out x $4/M
    assert cost_usd(usage, prices) == pytest.approx(400e-6 + 600 * 8e-6 + 100 * 4e-6)


def test_a_model_without_an_audio_price_prices_audio_as_text() -> None:
    prices = ModelPrices.per_million(prompt=0.3, completion=2.5)
    with_audio = normalize_usage(AUDIO_CALL)
    as_text = Usage(prompt_tokens=100_000, completion_tokens=1_000)
    assert cost_usd(with_audio, prices) == cost_usd(as_text, prices)
    assert cost_usd(with_audio, prices) == pytest.approx(100_000 * 0.3e-6 + 1_000 * 2.5e-6)


def test_cache_reads_of_unknown_modality_stay_at_the_read_price() -> None:
    """OpenAI's dialect does not say which cache reads are audio: they are read as text
    (as genai-prices reads them), and the audio fills the uncached input, never past it."""
    usage = normalize_usage(
        {
            "prompt_tokens": 100_000,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 60_000, "audio_tokens": 90_000},
        }
    )
    # 60,000 reads x $0.03/M + 40,000 uncached, all audio, x $1/M: no token twice.
    assert cost_usd(usage, FLASH) == pytest.approx(60_000 * 0.03e-6 + 40_000 * 1e-6)


def test_cached_audio_said_apart_is_read_at_the_audio_read_price() -> None:
    usage = Usage(
        prompt_tokens=100_000,
        cached_tokens=60_000,
        prompt_audio_tokens=90_000,
        cached_audio_tokens=50_000,
    )
    # 10,000 text reads x $0.03/M + 50,000 audio reads x $0.10/M + 40,000 uncached audio
    # x $1/M; no text left uncached.
    hand = 10_000 * 0.03e-6 + 50_000 * 0.1e-6 + 40_000 * 1e-6
    assert cost_usd(usage, FLASH) == pytest.approx(hand)
    saved = 10_000 * (0.3e-6 - 0.03e-6) + 50_000 * (1e-6 - 0.1e-6)
    assert prompt_cache_savings(usage, FLASH) == pytest.approx(saved)


def test_a_capability_derives_the_audio_read_price() -> None:
    prices = ModelPrices.per_million(prompt=0.3, completion=2.5, prompt_audio=1)
    completed = prices.completed(
        CacheCapability(family="google", kind="automatic", read_multiplier=0.25)
    )
    assert completed.cache_read_audio == Decimal("2.5E-7")
    assert (
        ModelPrices.per_million(prompt=1, completion=1)
        .completed(CacheCapability(family="google", kind="automatic", read_multiplier=0.25))
        .cache_read_audio
        is None
    )


def test_usage_defaults_and_sums_keep_their_old_meaning() -> None:
    assert Usage(1, 2, 0, 0, 0, 0, True) == Usage(prompt_tokens=1, completion_tokens=2)
    total = Usage(10, 5, prompt_audio_tokens=4) + Usage(10, 5, completion_audio_tokens=3)
    assert (total.prompt_audio_tokens, total.completion_audio_tokens) == (4, 3)


def test_an_audio_price_is_bounded_like_every_price() -> None:
    from limpet.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="prompt_audio"):
        ModelPrices(prompt=Decimal(0), completion=Decimal(0), prompt_audio=Decimal(-1))


counts = st.integers(min_value=0, max_value=10**9)
per_m = st.decimals(min_value=0, max_value=100, places=3)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt = draw(counts)
    completion = draw(counts)
    details = {
        "cached_tokens": draw(counts),
        "cache_write_tokens": draw(st.integers(min_value=0, max_value=10**6)),
        "audio_tokens": draw(counts),
    }
    return normalize_usage(
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": details,
            "completion_tokens_details": {"audio_tokens": draw(counts)},
        }
    )


@given(usages(), st.integers(min_value=0, max_value=10**9), per_m, per_m, per_m, per_m)
def test_moving_tokens_to_a_pricier_audio_rate_never_lowers_the_cost(
    usage: Usage, more: int, prompt: Decimal, extra: Decimal, out: Decimal, out_extra: Decimal
) -> None:
    prices = ModelPrices.per_million(
        prompt=prompt,
        completion=out,
        prompt_audio=prompt + extra,
        completion_audio=out + out_extra,
    )
    before = cost_usd(usage, prices)
    moved = Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        prompt_audio_tokens=min(usage.prompt_audio_tokens + more, usage.prompt_tokens),
        completion_audio_tokens=min(usage.completion_audio_tokens + more, usage.completion_tokens),
    )
    assert cost_usd(moved, prices) >= before


@given(usages())
def test_every_token_is_billed_exactly_once(usage: Usage) -> None:
    """At one price per token for every bucket, text or audio, cached or not, the cost is
    the number of tokens: none left out, none counted twice."""
    one = Decimal(1)
    prices = ModelPrices(
        prompt=one,
        completion=one,
        cache_read=one,
        cache_write=one,
        cache_write_1h=one,
        prompt_audio=one,
        completion_audio=one,
        cache_read_audio=one,
    )
    assert cost_usd(usage, prices) == usage.prompt_tokens + usage.completion_tokens
    # And at distinct prices, each bucket's count is what the prices single out.
    audio_only = ModelPrices(prompt=Decimal(0), completion=Decimal(0), prompt_audio=one)
    uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    assert cost_usd(usage, audio_only) == min(usage.prompt_audio_tokens, uncached)

"""Prices and the cost ledger: hand-computed dollars, the PriceTable's sources and refresh."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.errors import APIConnectionError, ConfigurationError, NotFoundError
from limpet.models import Cost, Usage
from limpet.providers.pricing import (
    ModelPrices,
    PriceTable,
    completion_cost,
    cost_usd,
    genai,
    prompt_cache_savings,
    split_writes,
    storage_cost_usd,
)
from limpet.providers.pricing.prices import MAX_PRICE
from limpet.providers.usage import normalize_usage

SONNET = ModelPrices.per_million(
    prompt=3, completion=15, cache_read=0.3, cache_write=3.75, cache_write_1h=6
)
FLASH = ModelPrices.per_million(prompt=0.3, completion=2.5, cache_read=0.075)
DEEPSEEK = ModelPrices.per_million(prompt=0.28, completion=0.42, cache_read=0.028)
GPT5_MINI = ModelPrices.per_million(prompt=0.25, completion=2, cache_read=0.025)
GROK = ModelPrices.per_million(prompt=3, completion=15, cache_read=0.75)

# usage payload, prices, dollars spent, dollars prompt caching saved (all by hand).
COST_TABLE: list[tuple[str, dict[str, Any], ModelPrices, float, float]] = [
    (
        # 200 x $3 + 1,500 x $0.30 + 300 x $3.75 + 50 x $15, per million.
        # Saved: 1,500 x ($3 - $0.30) - 300 x ($3.75 - $3).
        "openrouter reads and writes",
        {
            "prompt_tokens": 2000,
            "completion_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 300},
        },
        SONNET,
        0.002925,
        0.003825,
    ),
    (
        # 21 x $3 + 188,086 x $3.75 + 393 x $15: each write billed once, as a write.
        # Saved: -188,086 x $0.75 (a first call only pays the write premium).
        "anthropic write",
        {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188086,
            "cache_read_input_tokens": 0,
            "output_tokens": 393,
        },
        SONNET,
        0.7112805,
        -0.1410645,
    ),
    (
        # 100 x $3 + 1,000 x $3.75 + 4,000 x $6 + 10,000 x $0.30 + 200 x $15.
        # Saved: 10,000 x $2.70 - 1,000 x $0.75 - 4,000 x $3.
        "anthropic 5m and 1h writes",
        {
            "input_tokens": 100,
            "cache_creation_input_tokens": 5000,
            "cache_read_input_tokens": 10000,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 1000,
                "ephemeral_1h_input_tokens": 4000,
            },
            "output_tokens": 200,
        },
        SONNET,
        0.03405,
        0.01425,
    ),
    (
        # 2,000 x $0.30 + 8,000 x $0.075 + (500 + 300 thinking) x $2.50.
        # Saved: 8,000 x $0.225.
        "gemini native",
        {
            "promptTokenCount": 10000,
            "cachedContentTokenCount": 8000,
            "candidatesTokenCount": 500,
            "thoughtsTokenCount": 300,
            "totalTokenCount": 10800,
        },
        FLASH,
        0.0032,
        0.0018,
    ),
    (
        # 176 x $0.28 + 1,024 x $0.028 + 50 x $0.42. Saved: 1,024 x $0.252.
        "deepseek",
        {
            "prompt_tokens": 1200,
            "completion_tokens": 50,
            "prompt_cache_hit_tokens": 1024,
            "prompt_cache_miss_tokens": 176,
        },
        DEEPSEEK,
        0.000098952,
        0.000258048,
    ),
    (
        # 952 x $0.25 + 2,048 x $0.025 + 100 x $2 (reasoning inside). Saved: 2,048 x $0.225.
        "openai",
        {
            "prompt_tokens": 3000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 2048},
            "completion_tokens_details": {"reasoning_tokens": 64},
        },
        GPT5_MINI,
        0.0004892,
        0.0004608,
    ),
    (
        # 32 x $3 + (9 + 200 reasoning reported beside it) x $15.
        "xai",
        {
            "prompt_tokens": 32,
            "completion_tokens": 9,
            "total_tokens": 241,
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
        GROK,
        0.003231,
        0.0,
    ),
]


def one_listed(model: str, prompt: str, completion: str) -> PriceTable:
    """A table with ``model`` alone listed at these prices (per token), and no fallback."""
    table = PriceTable(fallback=False)
    pricing = {"prompt": prompt, "completion": completion}
    table.add_listing({"data": [{"id": model, "pricing": pricing}]})
    return table


@pytest.mark.parametrize(
    ("payload", "prices", "usd", "saved"),
    [row[1:] for row in COST_TABLE],
    ids=[row[0] for row in COST_TABLE],
)
def test_cost_table(payload: dict[str, Any], prices: ModelPrices, usd: float, saved: float) -> None:
    usage = normalize_usage(payload)
    assert cost_usd(usage, prices) == pytest.approx(usd, abs=1e-9, rel=0)
    assert prompt_cache_savings(usage, prices) == pytest.approx(saved, abs=1e-9, rel=0)
    cost = completion_cost(usage, prices)
    assert cost is not None
    assert (cost.usd, cost.saved_usd) == (
        cost_usd(usage, prices),
        prompt_cache_savings(usage, prices),
    )


def test_anthropic_writes_are_not_billed_twice() -> None:
    # Regression: the double-billing peers computed (input + creation) at the prompt price
    # plus creation at the write price.
    usage = normalize_usage(COST_TABLE[1][1])
    double = (21 + 188086) * 3e-6 + 188086 * 3.75e-6 + 393 * 15e-6
    assert cost_usd(usage, SONNET) == pytest.approx(0.7112805, abs=1e-9)
    assert abs(cost_usd(usage, SONNET) - double) > 0.5


def test_openrouter_cache_writes_are_priced_as_writes() -> None:
    # Regression: ignoring cache_write_tokens prices writes at the prompt price.
    usage = normalize_usage(COST_TABLE[0][1])
    ignored = 500 * 3e-6 + 1500 * 0.3e-6 + 50 * 15e-6
    assert cost_usd(usage, SONNET) - ignored == pytest.approx(300 * 0.75e-6, abs=1e-12)


def test_the_gateways_reported_cost_wins_and_prices_give_the_savings() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cached_tokens=800)
    assert completion_cost(usage, SONNET, reported=0.5) == Cost(0.5, 800 * 2.7e-6)
    assert completion_cost(usage, None, reported=0.5) == Cost(0.5, 0.0)
    assert completion_cost(usage, None) is None


def test_a_request_fee_and_missing_cache_prices() -> None:
    prices = ModelPrices.per_million(prompt=1, completion=2, request=0.001)
    usage = Usage(
        prompt_tokens=1000, completion_tokens=100, cached_tokens=400, cache_write_tokens=100
    )
    # Unlisted cache prices are charged at the prompt price: no saving, no premium.
    assert cost_usd(usage, prices) == pytest.approx(0.001 + 1000e-6 + 200e-6, abs=1e-12)
    assert prompt_cache_savings(usage, prices) == 0.0


def test_storage_cost() -> None:
    # 100,000 tokens for 2 h at $1 per million tokens per hour; 30 minutes of 4,096 at $4.50.
    assert storage_cost_usd(100_000, 7200, 1.0) == pytest.approx(0.2, abs=1e-12)
    assert storage_cost_usd(4096, 1800, 4.5) == pytest.approx(0.009216, abs=1e-12)
    assert storage_cost_usd(100, -5, 1.0) == 0.0


def test_openrouter_pricing_strings() -> None:
    prices = ModelPrices.from_openrouter(
        {
            "prompt": "0.000003",
            "completion": "0.000015",
            "request": "0",
            "input_cache_read": "0.0000003",
            "input_cache_write": "0.00000375",
            "input_cache_write_1h": "0.000006",
            "internal_reasoning": "0",
        }
    )
    assert prices is not None
    assert (prices.prompt, prices.cache_read, prices.cache_write_1h) == (
        Decimal("0.000003"),
        Decimal("0.0000003"),
        Decimal("0.000006"),
    )
    assert prices.source == "gateway"
    assert ModelPrices.from_openrouter({"prompt": "-1", "completion": "-1"}) is None
    assert ModelPrices.from_openrouter({"prompt": "abc", "completion": "0"}) is None
    assert ModelPrices.from_openrouter(None) is None
    odd = ModelPrices.from_openrouter({"prompt": "1", "completion": "2", "input_cache_read": "?"})
    assert odd is not None and odd.cache_read is None


@pytest.mark.parametrize("absurd", ["1e999999", "1e400", "1001"])
def test_a_listed_price_past_the_bound_is_no_price(absurd: str) -> None:
    # Regression: "1e999999" overflowed as a paid call was priced, and failed the call.
    assert ModelPrices.from_openrouter({"prompt": absurd, "completion": "0.00001"}) is None
    listed = ModelPrices.from_openrouter({"prompt": "1", "completion": "1", "request": absurd})
    assert listed is not None and listed.request == 0
    at_bound = ModelPrices.from_openrouter({"prompt": "1000", "completion": "0"})
    assert at_bound is not None and at_bound.prompt == MAX_PRICE
    usage = Usage(prompt_tokens=10**15, completion_tokens=10**15)
    assert math.isfinite(cost_usd(usage, at_bound))
    # Cache prices derived from one at the bound stay within it (1 h writes cost 2x).
    derived = one_listed("anthropic/claude-sonnet-4.6", "600", "1").get(
        "anthropic/claude-sonnet-4.6"
    )
    assert derived is not None and derived.cache_write_1h == MAX_PRICE


def test_unlisted_cache_prices_come_from_the_capability_table() -> None:
    listing = {
        "data": [
            {
                "id": "anthropic/claude-sonnet-4.6",
                "pricing": {"prompt": "0.000003", "completion": "0"},
            },
            {"id": "acme/model", "pricing": {"prompt": "0.000001", "completion": "0"}},
        ]
    }
    table = PriceTable(fallback=False)
    assert table.add_listing(listing) == 2
    sonnet = table.get("anthropic/claude-sonnet-4.6")
    assert sonnet is not None
    assert (sonnet.read_price, sonnet.write_price, sonnet.write_1h_price) == (
        Decimal("0.0000003"),
        Decimal("0.00000375"),
        Decimal("0.000006"),
    )
    acme = table.get("acme/model")
    assert acme is not None and acme.read_price == acme.prompt


def test_sources_in_order_overrides_listing_fallback() -> None:
    table = PriceTable(
        overrides={"openai/gpt-5-mini": ModelPrices.per_million(prompt=9, completion=9)}
    )
    table.add_listing(
        {"data": [{"id": "openai/gpt-5-mini", "pricing": {"prompt": "1", "completion": "1"}}]}
    )
    mini = table.get("openai/gpt-5-mini:nitro")
    assert mini is not None and mini.prompt == Decimal("0.000009")
    table.add_listing({"data": [{"id": "x/listed", "pricing": {"prompt": "1", "completion": "1"}}]})
    listed = table.get("x/listed:floor")
    assert listed is not None and listed.source == "gateway"
    fallback = table.get("anthropic/claude-sonnet-4.6")
    assert fallback is not None and fallback.source == "genai-prices"
    assert (fallback.prompt, fallback.completion, fallback.cache_write_1h) == (
        Decimal("0.000003"),
        Decimal("0.000015"),
        Decimal("0.000006"),
    )
    assert table.get("acme/no-such-model") is None
    assert PriceTable(fallback=False).get("anthropic/claude-sonnet-4.6") is None
    with pytest.raises(ConfigurationError):
        table.override("", SONNET)
    with pytest.raises(ConfigurationError):
        ModelPrices.per_million(prompt="three", completion=1)


@pytest.mark.parametrize(
    ("answered", "overridden"),
    [
        ("openai/gpt-4o-2024-08-06", True),  # its dated snapshot: the override's model
        ("gpt-4o-2024-08-06", True),  # named as its provider does
        ("openai/gpt-4o-mini", False),  # another model (a ``models`` fallback)
    ],
)
def test_an_override_wins_over_the_listing_of_its_models_snapshot_answering(
    answered: str, overridden: bool
) -> None:
    """An override wins over every other source for its model: the answer naming the
    model's dated snapshot, listed at the gateway's price, is still priced by it (it was
    not: the snapshot's listing won). Another model answering is priced as itself."""
    table = PriceTable(overrides={"openai/gpt-4o": ModelPrices.per_million(prompt=1, completion=1)})
    listed = [
        {"id": name, "pricing": {"prompt": "0.0000025", "completion": "0.00001"}}
        for name in ("openai/gpt-4o-2024-08-06", "gpt-4o-2024-08-06", "openai/gpt-4o-mini")
    ]
    table.add_listing({"data": listed})
    prices = table.get(answered, "openai/gpt-4o")
    assert prices is not None
    assert prices.prompt == (Decimal("0.000001") if overridden else Decimal("0.0000025"))


async def test_the_listing_is_fetched_once_by_concurrent_callers() -> None:
    fetches = 0
    started, release = asyncio.Event(), asyncio.Event()

    async def fetch() -> object:
        nonlocal fetches
        fetches += 1
        started.set()
        await release.wait()
        return {"data": [{"id": "m/1", "pricing": {"prompt": "0.000001", "completion": "0"}}]}

    table = PriceTable(fetch, fallback=False)
    tasks = [asyncio.create_task(table.prices("m/1")) for _ in range(5)]
    await started.wait()
    release.set()
    found = await asyncio.gather(*tasks)
    assert fetches == 1
    assert all(p is not None and p.prompt == Decimal("0.000001") for p in found)
    await table.load()
    assert fetches == 1 and table.loaded


async def test_a_failed_fetch_falls_back_then_retries_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    fetches = 0

    async def fetch() -> object:
        nonlocal fetches
        fetches += 1
        if fetches < 3:
            raise APIConnectionError("gateway unreachable")
        return {
            "data": [
                {"id": "anthropic/claude-sonnet-4.6", "pricing": {"prompt": "1", "completion": "2"}}
            ]
        }

    table = PriceTable(fetch, retry_after=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="limpet.pricing"):
        first = await table.prices("anthropic/claude-sonnet-4.6")
        await table.prices("anthropic/claude-sonnet-4.6")
    assert first is not None and first.source == "genai-prices"
    assert (fetches, table.loaded) == (1, False)
    assert len(caplog.records) == 1 and "gateway unreachable" in caplog.text
    now[0] = 61.0
    await table.load()
    now[0] = 122.0
    listed = await table.prices("anthropic/claude-sonnet-4.6")
    assert (fetches, table.loaded) == (3, True)
    assert listed is not None and listed.source == "gateway" and listed.prompt == 1
    assert len(caplog.records) == 1  # logged once per outage
    assert "loaded" in repr(table)


async def test_a_gateway_without_models_is_normal_logged_once_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetches = 0

    async def fetch() -> object:
        nonlocal fetches
        fetches += 1
        raise NotFoundError("no such route", status_code=404)

    table = PriceTable(fetch, retry_after=0)
    with caplog.at_level(logging.DEBUG, logger="limpet.pricing"):
        for _ in range(3):
            found = await table.prices("anthropic/claude-sonnet-4.6")
            assert found is not None and found.source == "genai-prices"
    assert fetches == 3
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "no /models" in caplog.text


async def test_a_listing_that_prices_nothing_counts_as_a_failure() -> None:
    fetches = 0

    async def fetch() -> object:
        nonlocal fetches
        fetches += 1
        return {"error": {"code": 500}}

    table = PriceTable(fetch, retry_after=0)
    await table.load()
    await table.load()
    assert (fetches, table.loaded) == (2, False)


def test_other_names_of_the_model_are_tried_listing_first() -> None:
    table = PriceTable()
    table.add_listing(
        {
            "data": [
                {"id": "anthropic/claude-sonnet-4.6", "pricing": {"prompt": "1", "completion": "1"}}
            ]
        }
    )
    # The response names a dated slug the listing lacks; the requested slug is listed.
    found = table.get("anthropic/claude-sonnet-4-6-20260101", "anthropic/claude-sonnet-4.6")
    assert found is not None and found.source == "gateway"
    assert table.get("acme/x", "openai/gpt-5-mini") is not None
    assert table.get("acme/x", "acme/y") is None


def test_a_free_variant_costs_nothing_whatever_is_listed_or_answered() -> None:
    # Regression: ":free" was stripped like any variant, and priced as the paid model:
    # a free call reported dollars, and prompt-cache savings it never made.
    paid = {"prompt": "0.00000055", "completion": "0.00000219"}
    table = PriceTable()
    table.add_listing({"data": [{"id": "deepseek/deepseek-r1", "pricing": paid}]})
    usage = Usage(prompt_tokens=100_000, completion_tokens=10_000, cached_tokens=90_000)
    for names in (
        ("deepseek/deepseek-r1:free",),
        ("deepseek/deepseek-r1", "deepseek/deepseek-r1:free"),
    ):
        free = table.get(*names)
        assert free is not None and free.source == "free"
        assert completion_cost(usage, free) == Cost(0.0, 0.0)
    # Another model answering a free request (one of its ``models`` fallbacks) is paid.
    fallback = table.get("deepseek/deepseek-r1", "meta-llama/llama-3.3-70b-instruct:free")
    assert fallback is not None and fallback.source == "gateway"
    mine = ModelPrices(prompt=Decimal(1), completion=Decimal(1))
    table.override("deepseek/deepseek-r1", mine)
    # The paid model's override is not the free variant's, however the answer names it.
    for names in (
        ("deepseek/deepseek-r1:free",),
        ("deepseek/deepseek-r1", "deepseek/deepseek-r1:free"),
    ):
        assert table.get(*names) == _free_prices(table), names
    table.override("deepseek/deepseek-r1:free", mine)
    assert table.get("deepseek/deepseek-r1:free") == mine  # an override still wins
    assert table.get("deepseek/deepseek-r1", "deepseek/deepseek-r1:free") == mine


def _free_prices(table: PriceTable) -> ModelPrices | None:
    return table.get("acme/nothing:free")


def test_resolved_prices_follow_later_overrides_and_listings() -> None:
    table = PriceTable(fallback=False)
    assert table.get("x/model") is None  # resolved (to unknown) and kept
    table.add_listing({"data": [{"id": "x/model", "pricing": {"prompt": "1", "completion": "2"}}]})
    listed = table.get("x/model")
    assert listed is not None and listed.prompt == Decimal(1)
    assert table.get("x/model") is listed  # kept: one resolution per model, not per call
    table.override("x/model", ModelPrices.per_million(prompt=5, completion=5))
    overridden = table.get("x/model")
    assert overridden is not None and overridden.source == "override"
    assert asyncio.run(table.prices("x/model")) is overridden


def test_cache_prices_follow_the_requested_family_when_the_answer_names_another() -> None:
    # Regression: the family was looked up by the answer's name only; a gateway answering
    # with the provider's own name (no "anthropic/") left reads priced as uncached input.
    table = one_listed("anthropic/claude-sonnet-4.6", "0.000003", "0.000015")
    requested = table.get("anthropic/claude-sonnet-4.6")
    answered = table.get("claude-sonnet-4-6", "anthropic/claude-sonnet-4.6")
    assert answered is not None and requested is not None
    assert (answered.cache_read, answered.cache_write) == (
        Decimal("0.0000003"),
        Decimal("0.00000375"),
    )
    assert answered == requested
    usage = Usage(prompt_tokens=10000, completion_tokens=100, cached_tokens=9000)
    assert completion_cost(usage, answered) == completion_cost(usage, requested)


@pytest.mark.parametrize("name", [5, ["m"], {"a": 1}, None, ""])
def test_a_model_name_that_is_not_a_string_is_ignored(name: Any) -> None:
    # Regression: an upstream answer's "model" was used as is: 5 raised AttributeError,
    # a list TypeError (unhashable), failing the call.
    table = PriceTable(overrides={"x/model": SONNET}, fallback=False)
    assert table.get(name, "x/model") == SONNET
    assert asyncio.run(table.prices(name, "x/model")) == SONNET
    assert table.get(name) is None


@pytest.mark.parametrize("field", ["prompt", "completion", "cache_read", "request"])
def test_prices_past_the_bound_are_a_configuration_error(field: str) -> None:
    given: dict[str, Any] = {"prompt": Decimal(1), "completion": Decimal(1)}
    given[field] = Decimal("9e999999")
    with pytest.raises(ConfigurationError, match=f"ModelPrices.{field}: expected a price from 0"):
        ModelPrices(**given)


async def test_an_embedding_model_genai_prices_by_input_alone_is_priced_for_embeddings() -> None:
    # Regression: its entry has no output price, so it was no price at all, and embed()'s
    # cost unknown where neither the gateway's listing nor its answer said.
    table = PriceTable()
    model = "openai/text-embedding-3-small"
    assert table.get(model) is None  # a completion priced at 0 output would under-report
    found = await table.input_prices(model)
    assert found is not None and found.source == "genai-prices"
    assert (found.prompt, found.completion) == (Decimal("0.02") / 1_000_000, Decimal(0))
    assert await table.input_prices("acme/unknown-embedder") is None


@pytest.mark.parametrize(
    ("model", "prompt", "expected"),
    [
        # 300k x $2.50/M + 1k x $15/M: the whole request at the long-context rates.
        ("google/gemini-2.5-pro", 300_000, 0.765),
        ("google/gemini-2.5-pro", 200_000, 0.26),  # at the threshold: 200k x $1.25/M + $10/M
        ("anthropic/claude-sonnet-4.5", 300_000, 1.8225),  # $6/M and $22.50/M
    ],
)
def test_the_fallback_prices_long_contexts_at_their_own_rates(
    model: str, prompt: int, expected: float
) -> None:
    """genai-prices' context tiers (over 200,000 prompt tokens) were read as their base
    price: a long Gemini 2.5 Pro call was charged half of what it cost."""
    prices = PriceTable().get(model)
    assert prices is not None and prices.long_context is not None
    cost = completion_cost(Usage(prompt_tokens=prompt, completion_tokens=1_000), prices)
    assert cost is not None and cost.usd == pytest.approx(expected)


@pytest.mark.parametrize("model", ["qwen/qwen3-coder-flash", "qwen/qwen3.7-flash"])
@pytest.mark.parametrize(
    "prompt", [1_000, 32_000, 32_001, 128_000, 128_001, 200_000, 256_000, 256_001, 300_000]
)
def test_the_fallback_prices_every_context_tier_as_genai_prices_does(
    model: str, prompt: int
) -> None:
    """Some models have two context tiers or more (32,000 and 128,000 tokens): only the
    first was kept, so a prompt past the second was priced at the first's rates."""
    from genai_prices import Usage as Counted
    from genai_prices import calc_price

    prices = PriceTable().get(model)
    assert prices is not None and prices.source == "genai-prices"
    reference = calc_price(
        Counted(input_tokens=prompt, output_tokens=1_000), model_ref=model, provider_id="openrouter"
    )
    usage = Usage(prompt_tokens=prompt, completion_tokens=1_000)
    assert cost_usd(usage, prices) == pytest.approx(float(reference.total_price))


def test_the_fallbacks_time_of_day_prices_follow_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """genai-prices prices DeepSeek by time of day (off-peak 16:30-00:30 UTC): the price
    of the first lookup was kept for the life of the process."""
    from genai_prices import Usage as Counted
    from genai_prices import calc_price

    class Clock(datetime):
        at = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)

        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            return cast(Clock, cls.at)

    monkeypatch.setattr(genai, "datetime", Clock)
    table = PriceTable()
    usage = Usage(prompt_tokens=100_000, completion_tokens=10_000)
    costs = []
    for moment in ("12:00", "16:29:59", "16:30", "20:00", "00:29:59", "00:30", "08:00"):
        day = 16 if moment.startswith("0") else 15
        Clock.at = datetime.fromisoformat(f"2026-12-{day}T{moment}+00:00")
        reference = calc_price(
            Counted(input_tokens=100_000, output_tokens=10_000),
            model_ref="deepseek-chat",
            provider_id="deepseek",
            genai_request_timestamp=Clock.at,
        )
        prices = table.get("deepseek/deepseek-chat")
        assert prices is not None and prices.source == "genai-prices"
        costs.append(cost_usd(usage, prices))
        assert costs[-1] == pytest.approx(float(reference.total_price)), moment
    assert len(set(costs)) == 2  # two prices, each taken in its own hours


def test_long_context_prices_apply_past_their_threshold_cache_included() -> None:
    long = ModelPrices.per_million(prompt=2, completion=20, cache_read=0.2)
    prices = ModelPrices.per_million(prompt=1, completion=10, cache_read=0.1)
    prices = ModelPrices(
        prompt=prices.prompt, completion=prices.completion, long_context=(1_000, long)
    )
    assert prices.at(1_000) is prices and prices.at(1_001) is long
    longer = ModelPrices.per_million(prompt=4, completion=40)
    tiered = replace(prices, long_context=(1_000, replace(long, long_context=(5_000, longer))))
    assert [tiered.at(n).prompt for n in (1_000, 1_001, 5_000, 5_001)] == [
        prices.prompt,
        long.prompt,
        long.prompt,
        longer.prompt,
    ]
    # 1,500 prompt tokens, 1,000 of them read from the cache: all at the long rates.
    usage = Usage(prompt_tokens=1_500, completion_tokens=10, cached_tokens=1_000)
    assert cost_usd(usage, prices) == pytest.approx((500 * 2 + 1_000 * 0.2 + 10 * 20) / 1e6)
    assert prompt_cache_savings(usage, prices) == pytest.approx(1_000 * 1.8 / 1e6)
    with pytest.raises(ConfigurationError, match="long_context"):
        ModelPrices(prompt=Decimal(0), completion=Decimal(0), long_context=(0, long))


def test_an_override_of_a_dotted_slug_prices_its_dashed_snapshot() -> None:
    """OpenRouter spells versions with dots, Anthropic's answers with dashes."""
    one = ModelPrices.per_million(prompt=1, completion=1)
    table = PriceTable(overrides={"anthropic/claude-3.5-sonnet": one})
    listing = {"prompt": "0.000003", "completion": "0.000015"}
    table.add_listing({"data": [{"id": "claude-3-5-sonnet-20241022", "pricing": listing}]})
    prices = table.get("claude-3-5-sonnet-20241022", "anthropic/claude-3.5-sonnet")
    assert prices is not None and prices.prompt == Decimal("0.000001")


SONNET = ModelPrices(
    prompt=Decimal("3e-6"),
    completion=Decimal("15e-6"),
    cache_read=Decimal("0.3e-6"),
    cache_write=Decimal("3.75e-6"),
    cache_write_1h=Decimal("6e-6"),
)


@given(
    st.integers(1, 200_000),
    st.integers(0, 200_000),
    st.integers(0, 100_000),
    st.integers(0, 100_000),
    st.data(),
)
def test_a_charge_tells_how_many_of_one_total_of_writes_were_1h(
    writes: int, uncached: int, cached: int, completion: int, data: st.DataObject
) -> None:
    hours = data.draw(st.integers(0, writes))
    usage = Usage(
        prompt_tokens=writes + uncached + cached,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_write_tokens=writes,
        cache_write_1h_tokens=hours,
    )
    charged = cost_usd(usage, SONNET)  # what the gateway billed, as one total of writes
    reported = replace(usage, cache_write_1h_tokens=0)
    assert split_writes(reported, SONNET, charged) == usage


@pytest.mark.parametrize("charged", [0.0, -1.0, 1e9])
def test_a_charge_no_split_explains_is_bounded_by_the_writes(charged: float) -> None:
    usage = Usage(prompt_tokens=3000, completion_tokens=10, cache_write_tokens=2000)
    split = split_writes(usage, SONNET, charged).cache_write_1h_tokens
    assert split == (2000 if charged > 1 else 0)


def test_writes_priced_alike_whatever_their_ttl_are_left_as_they_are() -> None:
    usage = Usage(prompt_tokens=3000, completion_tokens=10, cache_write_tokens=2000)
    flat = replace(SONNET, cache_write_1h=None)  # a 1 h write at the 5 min price
    assert split_writes(usage, flat, 1.0) is usage

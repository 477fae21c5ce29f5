"""The account stage: ``entry_now`` (prices already resolved, no await) gives what
``entry`` gives, and defers to it while a model's prices are unresolved."""

from __future__ import annotations

from typing import Any

from limpet.cache.base import CacheEntry
from limpet.config import CachePolicy
from limpet.pipeline.account import Accounting
from limpet.pipeline.policy import decide
from limpet.pipeline.request import Request
from limpet.providers.pricing import ModelPrices, PriceTable
from limpet.providers.usage import parse_usage

MODEL = "acme/model"
ANSWER: dict[str, Any] = {
    "model": MODEL,
    "choices": [{"message": {"role": "assistant", "content": "hi"}}],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 1000},
    },
}


def request() -> Request:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    return Request(body, decide(body, None, CachePolicy()), 60.0)


def comparable(entry: CacheEntry) -> tuple[Any, ...]:
    return entry.body, entry.usage, entry.cost_usd, entry.endpoint, entry.stream


async def test_entry_now_waits_for_prices_then_answers_as_entry_does() -> None:
    table = PriceTable(fallback=False)
    table.override(MODEL, ModelPrices.per_million(prompt=3, completion=15, cache_read=0.3))
    account = Accounting(table)
    usage = parse_usage(ANSWER["usage"])
    first = request()
    assert account.entry_now(first, ANSWER, usage, "a", ANSWER) is None  # not resolved yet
    awaited = await account.entry(first, ANSWER, usage, "a", ANSWER)
    second = request()
    now = account.entry_now(second, ANSWER, usage, "a", ANSWER)
    assert now is not None and comparable(now) == comparable(awaited)
    assert awaited.cost_usd is not None and awaited.cost_usd > 0
    assert first.saved_usd is not None and first.saved_usd > 0
    assert second.saved_usd == first.saved_usd

"""The cost ledger's arithmetic: what a call cost, and what provider prompt caching saved.
Pure and exact: prices are ``Decimal`` per token, and only the result becomes a float.

Example:
    >>> prices = ModelPrices.per_million(prompt=3, completion=15, cache_read=0.3,
    ...                                  cache_write=3.75, cache_write_1h=6)
    >>> u = Usage(prompt_tokens=10_000, completion_tokens=500, cached_tokens=8_000)
    >>> cost_usd(u, prices)                 # 2,000 x $3/M + 8,000 x $0.30/M + 500 x $15/M
    0.0159
    >>> prompt_cache_savings(u, prices)     # 8,000 x ($3 - $0.30)/M
    0.0216
"""

from __future__ import annotations

from decimal import Decimal

from limpet.models import Cost, Usage
from limpet.providers.pricing.prices import MILLION, ModelPrices, to_decimal

__all__ = ["completion_cost", "cost_usd", "prompt_cache_savings", "storage_cost_usd"]

_HOUR = Decimal(3600)


def cost_usd(usage: Usage, prices: ModelPrices) -> float:
    """What a call with ``usage`` costs at ``prices`` (their long-context rates past
    their threshold), in USD.

    Every input token is billed once, in its own bucket: uncached at the prompt price,
    reads at the read price, writes at the write price of their TTL.
    """
    prices = prices.at(usage.prompt_tokens)
    total = (
        usage.uncached_tokens * prices.prompt
        + usage.cached_tokens * prices.read_price
        + usage.cache_write_5m_tokens * prices.write_price
        + usage.cache_write_1h_tokens * prices.write_1h_price
        + usage.completion_tokens * prices.completion
        + prices.request
    )
    return float(total)


def prompt_cache_savings(usage: Usage, prices: ModelPrices) -> float:
    """What provider prompt caching saved on one call, in USD: reads x (prompt price - read
    price), less writes x (write price - prompt price). Negative when a call only wrote."""
    if not usage.cached_tokens and not usage.cache_write_tokens:
        return 0.0  # most calls: nothing read or written, no Decimal arithmetic to do
    prices = prices.at(usage.prompt_tokens)
    prompt = prices.prompt
    saved = (
        usage.cached_tokens * (prompt - prices.read_price)
        - usage.cache_write_5m_tokens * (prices.write_price - prompt)
        - usage.cache_write_1h_tokens * (prices.write_1h_price - prompt)
    )
    return float(saved)


def completion_cost(
    usage: Usage, prices: ModelPrices | None, reported: float | None = None
) -> Cost | None:
    """``Completion.cost`` of an upstream call.

    Args:
        usage: the call's normalised usage.
        prices: the model's prices, or None when unknown.
        reported: the gateway's own ``usage.cost`` (``limpet.providers.usage.reported_cost``); it
            wins over the computed cost, since it is what was charged.

    Returns:
        ``Cost(usd, saved_usd)``, or None when the cost is unknown: the response reported
        no usage (``usage.reported`` is False: pricing its zeros would claim $0), or
        neither a reported cost nor prices exist.
    """
    if not usage.reported:
        return None
    if prices is None:
        return None if reported is None else Cost(reported, 0.0)
    prices = prices.at(usage.prompt_tokens)
    usd = cost_usd(usage, prices) if reported is None else reported
    return Cost(usd, prompt_cache_savings(usage, prices))


def storage_cost_usd(tokens: int, seconds: float, usd_per_mtok_hour: float) -> float:
    """Explicit-cache storage (Gemini ``cachedContents``): tokens x hours x hourly price per
    million tokens, prorated by the second."""
    if tokens <= 0 or seconds <= 0:
        return 0.0
    hours = to_decimal(seconds) / _HOUR
    return float(tokens * hours * to_decimal(usd_per_mtok_hour) / MILLION)

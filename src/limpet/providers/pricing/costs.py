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

from dataclasses import replace
from decimal import Decimal

from limpet.models import Cost, Usage
from limpet.providers.pricing.prices import MILLION, ModelPrices, to_decimal

__all__ = [
    "completion_cost",
    "cost_usd",
    "prompt_cache_savings",
    "split_writes",
    "storage_cost_usd",
]

_HOUR = Decimal(3600)


def cost_usd(usage: Usage, prices: ModelPrices) -> float:
    """What a call with ``usage`` costs at ``prices`` (their long-context rates past
    their threshold), in USD.

    Every input token is billed once, in its own bucket: uncached at the prompt price,
    reads at the read price, writes at the write price of their TTL; audio tokens among
    the uncached and the reads at their audio prices instead (``_audio_premium``), and
    audio output at the audio output price.
    """
    return float(_cost(usage, prices.at(usage.prompt_tokens)))


def _cost(usage: Usage, prices: ModelPrices) -> Decimal:
    cost = (
        usage.uncached_tokens * prices.prompt
        + usage.cached_tokens * prices.read_price
        + usage.cache_write_5m_tokens * prices.write_price
        + usage.cache_write_1h_tokens * prices.write_1h_price
        + usage.completion_tokens * prices.completion
        + prices.request
    )
    if usage.prompt_audio_tokens or usage.completion_audio_tokens:
        cost += _audio_premium(usage, prices)
    return cost


def _audio_split(usage: Usage) -> tuple[int, int]:
    """The audio tokens among ``usage``'s cache reads, and among its uncached input.

    Audio is a share of ``prompt_tokens``, not tokens beside it. A dialect that does not
    say how much of the cache reads is audio (OpenAI's) has every read count as text, as
    genai-prices reads such a usage: the reads stay at the read price, and the audio fills
    the uncached input, never past it (audio beyond it was written to the cache, and a
    write is priced as one). Clamped, since a ``Usage`` may be built by hand.
    """
    read = max(min(usage.cached_audio_tokens, usage.cached_tokens), 0)
    uncached = max(min(usage.prompt_audio_tokens - read, usage.uncached_tokens), 0)
    return read, uncached


def _audio_premium(usage: Usage, prices: ModelPrices) -> Decimal:
    """What ``usage``'s audio tokens cost beyond the same tokens priced as text (negative
    when audio is the cheaper): each audio token is already counted once, as text, in
    its bucket, so only the difference is added."""
    read, uncached = _audio_split(usage)
    output = max(min(usage.completion_audio_tokens, usage.completion_tokens), 0)
    return (
        uncached * (prices.audio_price - prices.prompt)
        + read * (prices.audio_read_price - prices.read_price)
        + output * (prices.completion_audio_price - prices.completion)
    )


def split_writes(usage: Usage, prices: ModelPrices, reported: float) -> Usage:
    """``usage`` with its cache writes of mixed TTLs split between 5 min and 1 h as the
    gateway's own charge (``reported``) says: OpenRouter reports one total of writes
    whatever their TTL, and a request whose marks ask for both pays each at its own
    price. The number of 1 h writes that makes ``cost_usd`` equal the charge, within
    the writes; ``usage`` itself when the prices tell the two apart by nothing.

    Example:
        >>> from decimal import Decimal
        >>> prices = ModelPrices(prompt=Decimal("3e-6"), completion=Decimal("15e-6"),
        ...     cache_write=Decimal("3.75e-6"), cache_write_1h=Decimal("6e-6"))
        >>> usage = Usage(prompt_tokens=3000, completion_tokens=10, cache_write_tokens=3000)
        >>> charged = 1000 * 6e-6 + 2000 * 3.75e-6 + 10 * 15e-6
        >>> split_writes(usage, prices, charged).cache_write_1h_tokens
        1000
    """
    writes = usage.cache_write_tokens
    at = prices.at(usage.prompt_tokens)
    gap = at.write_1h_price - at.write_price
    if not writes or gap <= 0:
        return usage
    all_5m = _cost(replace(usage, cache_write_1h_tokens=0), at)
    share = int(((to_decimal(reported) - all_5m) / gap).to_integral_value())
    return replace(usage, cache_write_1h_tokens=min(max(share, 0), writes))


def prompt_cache_savings(usage: Usage, prices: ModelPrices) -> float:
    """What provider prompt caching saved on one call, in USD: reads x (prompt price - read
    price), less writes x (write price - prompt price). Negative when a call only wrote."""
    if not usage.cached_tokens and not usage.cache_write_tokens:
        return 0.0  # most calls: nothing read or written, no Decimal arithmetic to do
    prices = prices.at(usage.prompt_tokens)
    prompt = prices.prompt
    audio_read = _audio_split(usage)[0]
    saved = (
        (usage.cached_tokens - audio_read) * (prompt - prices.read_price)
        + audio_read * (prices.audio_price - prices.audio_read_price)
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

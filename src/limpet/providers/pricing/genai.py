"""Fallback prices: the ones bundled with the ``genai-prices`` package (when installed),
for models the gateway does not list."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from limpet.providers.pricing.prices import MILLION, ModelPrices

__all__ = ["fallback_now", "fallback_quote", "fallback_snapshot"]

#: Fallback prices, and until when they hold (None: for good).
Quote = tuple[ModelPrices | None, datetime | None]

_ZERO = Decimal(0)
_THOUSAND = Decimal(1_000)


def fallback_snapshot() -> Any:
    """genai-prices' bundled data, or None when the package is not installed."""
    try:
        from genai_prices import data_snapshot
    except ImportError:
        return None
    return data_snapshot.get_snapshot()


def fallback_now() -> datetime:
    """The time genai-prices is asked the prices of (UTC)."""
    return datetime.now(tz=UTC)


def fallback_quote(model: str, *, input_only: bool = False) -> Quote:
    """``model``'s prices from genai-prices now: the provider's own entry (``anthropic``
    for ``anthropic/...``), else its OpenRouter entry; None when it knows neither. And
    until when they hold: the next moment genai-prices prices the model otherwise (a
    price starting on a date, an off-peak window opening or closing: DeepSeek's), None
    when never.

    ``input_only``: for a model billed by its input alone (an embedding model), whose
    entry prices no output: its completion price is then 0. (Otherwise an entry without
    an output price is no price: a completion priced at 0 would under-report.)"""
    snapshot = fallback_snapshot()
    if snapshot is None or not isinstance(model, str):
        return None, None
    slug = model.lower().partition(":")[0]
    provider, _, name = slug.rpartition("/")
    attempts: list[tuple[str, str | None]] = [(name, provider or None), (slug, "openrouter")]
    now = fallback_now()
    for ref, provider_id in attempts:
        try:
            _, info = snapshot.find_provider_model(ref, None, provider_id, None)
            found = _from_genai(info.get_prices(now), input_only)
            until = _next_change(info.prices, now)
        except Exception:  # third-party data: any failure there just means "unknown"
            continue
        if found is not None:
            return found, until
    return None, None


def _next_change(prices: Any, now: datetime) -> datetime | None:
    """The first moment after ``now`` at which one of genai-prices' conditional prices
    (a list of them: ``prices``) starts or stops applying; None for plain prices."""
    if not isinstance(prices, list):
        return None
    changes: list[datetime] = []
    for conditional in prices:
        constraint = getattr(conditional, "constraint", None)
        start_date = getattr(constraint, "start_date", None)
        if isinstance(start_date, date):
            starts = datetime.combine(start_date, time(0), tzinfo=UTC)
            if starts > now:
                changes.append(starts)
        for bound in (
            getattr(constraint, "start_time", None),
            getattr(constraint, "end_time", None),
        ):
            if isinstance(bound, time):
                # Naive: UTC, as genai-prices reads it; else its offset taken off.
                utc = (
                    bound
                    if bound.tzinfo is None
                    else (datetime.combine(date(1970, 1, 1), bound).astimezone(UTC).time())
                )
                at = datetime.combine(now.date(), utc.replace(tzinfo=None), tzinfo=UTC)
                changes.append(at if at > now else at + timedelta(days=1))
    return min(changes, default=None)


# The prices of a genai-prices ``ModelPrice`` that may be tiered by context length.
_TIERED = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "input_audio_mtok",
    "output_audio_mtok",
    "cache_audio_read_mtok",
)


def _from_genai(price: Any, input_only: bool) -> ModelPrices | None:
    """genai-prices' ``ModelPrice`` as ``ModelPrices``; each context tier of its prices
    (Gemini 2.5 Pro above 200,000 tokens; some models have two or more) becomes a
    ``long_context``, the next tier up the long context of the one below, each price at
    that tier (a price without tiers: its base)."""
    base = _at_tier(price, input_only, None)
    if base is None:
        return None
    starts: set[int] = set()
    for attr in _TIERED:
        for tier in getattr(getattr(price, attr, None), "tiers", None) or ():
            start = getattr(tier, "start", None)
            if type(start) is int and start > 0:
                starts.add(start)
    above: tuple[int, ModelPrices] | None = None
    for start in sorted(starts, reverse=True):
        at = _at_tier(price, input_only, start)
        if at is not None:
            above = (start, at if above is None else replace(at, long_context=above))
    return base if above is None else replace(base, long_context=above)


def _at_tier(price: Any, input_only: bool, start: int | None) -> ModelPrices | None:
    """The prices of ``price`` for a prompt past ``start`` tokens: each at its highest
    tier starting there or below (None: each at its base)."""

    def per_token(attr: str) -> Decimal | None:
        value = getattr(price, attr, None)
        tiered = getattr(value, "base", None)
        if tiered is not None:  # a TieredPrices: the base, or its highest tier by ``start``
            reached = [
                t
                for t in getattr(value, "tiers", None) or ()
                if start is not None and type(t.start) is int and t.start <= start
            ]
            value = max(reached, key=lambda t: t.start).price if reached else tiered
        return value / MILLION if isinstance(value, Decimal) and value.is_finite() else None

    prompt, completion = per_token("input_mtok"), per_token("output_mtok")
    if completion is None and input_only:
        completion = _ZERO
    if prompt is None or completion is None:
        return None
    requests = getattr(price, "requests_kcount", None)
    return ModelPrices(
        prompt=prompt,
        completion=completion,
        cache_read=per_token("cache_read_mtok"),
        cache_write=per_token("cache_write_mtok"),
        cache_write_1h=per_token("cache_write_1h_mtok"),
        request=requests / _THOUSAND if isinstance(requests, Decimal) else _ZERO,
        source="genai-prices",
        prompt_audio=per_token("input_audio_mtok"),
        completion_audio=per_token("output_audio_mtok"),
        cache_read_audio=per_token("cache_audio_read_mtok"),
    )

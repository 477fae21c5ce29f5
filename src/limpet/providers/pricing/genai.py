"""Fallback prices: the ones bundled with the ``genai-prices`` package (when installed),
for models the gateway does not list."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from limpet.providers.pricing.prices import MILLION, ModelPrices

__all__ = ["fallback_prices", "fallback_snapshot"]

_ZERO = Decimal(0)
_THOUSAND = Decimal(1_000)


def fallback_snapshot() -> Any:
    """genai-prices' bundled data, or None when the package is not installed."""
    try:
        from genai_prices import data_snapshot
    except ImportError:
        return None
    return data_snapshot.get_snapshot()


def fallback_prices(model: str, *, input_only: bool = False) -> ModelPrices | None:
    """``model``'s prices from genai-prices: the provider's own entry (``anthropic`` for
    ``anthropic/...``), else its OpenRouter entry. None when it knows neither.

    ``input_only``: for a model billed by its input alone (an embedding model), whose
    entry prices no output: its completion price is then 0. (Otherwise an entry without
    an output price is no price: a completion priced at 0 would under-report.)"""
    snapshot = fallback_snapshot()
    if snapshot is None or not isinstance(model, str):
        return None
    slug = model.lower().partition(":")[0]
    provider, _, name = slug.rpartition("/")
    attempts: list[tuple[str, str | None]] = [(name, provider or None), (slug, "openrouter")]
    now = datetime.now(tz=UTC)
    for ref, provider_id in attempts:
        try:
            _, info = snapshot.find_provider_model(ref, None, provider_id, None)
            found = _from_genai(info.get_prices(now), input_only)
        except Exception:  # third-party data: any failure there just means "unknown"
            continue
        if found is not None:
            return found
    return None


def _from_genai(price: Any, input_only: bool) -> ModelPrices | None:
    """genai-prices' ``ModelPrice`` as ``ModelPrices``; a context tier of its input price
    (Gemini 2.5 Pro above 200,000 tokens) becomes ``long_context``, each price at that
    tier (a price without tiers: its base)."""
    base = _at_tier(price, input_only, None)
    tiers = getattr(getattr(price, "input_mtok", None), "tiers", None)
    start = getattr(tiers[0], "start", None) if tiers else None
    if base is None or type(start) is not int or start <= 0:
        return base
    long = _at_tier(price, input_only, start)
    return base if long is None else replace(base, long_context=(start, long))


def _at_tier(price: Any, input_only: bool, start: int | None) -> ModelPrices | None:
    """The prices of ``price`` at its context tier starting at ``start`` (None: base)."""

    def per_token(attr: str) -> Decimal | None:
        value = getattr(price, attr, None)
        tiered = getattr(value, "base", None)
        if tiered is not None:  # a TieredPrices: the base, or the tier from ``start``
            tiers = getattr(value, "tiers", None) or ()
            tier = next((t for t in tiers if getattr(t, "start", None) == start), None)
            value = tiered if tier is None else tier.price
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
    )

"""Prices and the cost ledger: what a call cost, and what provider prompt caching saved.

``PriceTable`` knows what each model costs per token. It reads the gateway's ``/models``
listing (OpenRouter's ``pricing``: USD per token as decimal strings) once, lazily, through a
fetch callable the Client supplies; falls back to the prices bundled with the
``genai-prices`` package when the gateway does not list a model (or cannot be reached);
and takes user overrides before either. A cache price neither source lists is derived from
the model family's multiplier in the capability table (``limpet.providers.prompt_cache``).

The arithmetic is pure and exact: prices are ``Decimal`` per token, and only the result
becomes a float.

- ``prices``: ``ModelPrices``, what one model costs per token;
- ``costs``: the arithmetic (a call's cost, prompt-cache savings, explicit-cache storage);
- ``table``: ``PriceTable`` and its sources; ``genai``: the ``genai-prices`` fallback.
"""

from __future__ import annotations

from limpet.providers.pricing.costs import (
    completion_cost,
    cost_usd,
    prompt_cache_savings,
    split_writes,
    storage_cost_usd,
)
from limpet.providers.pricing.prices import ModelPrices
from limpet.providers.pricing.table import DEFAULT_RETRY_AFTER, ModelsFetch, PriceTable

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "ModelPrices",
    "ModelsFetch",
    "PriceTable",
    "completion_cost",
    "cost_usd",
    "prompt_cache_savings",
    "split_writes",
    "storage_cost_usd",
]

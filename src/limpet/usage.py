"""Usage dialects → ``Usage``. Pure, and never raises: a missing or odd field counts as 0.

OpenAI / OpenRouter dialect::

    {"prompt_tokens": 2000, "completion_tokens": 50,
     "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 0},
     "completion_tokens_details": {"reasoning_tokens": 10}, "cost": 0.0012}

``prompt_tokens`` includes cached and cache-write tokens; the buckets are clamped so that
uncached + cached + cache_write = prompt even when a provider reports inconsistent numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from limpet.models import Usage

__all__ = ["parse_usage", "reported_cost"]


def parse_usage(usage: object) -> Usage:
    """Normalise an OpenAI/OpenRouter ``usage`` object; anything unusable gives ``Usage()``."""
    if not isinstance(usage, Mapping):
        return Usage()
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = _mapping(usage.get("prompt_tokens_details"))
    completion_details = _mapping(usage.get("completion_tokens_details"))
    cached = min(_count(prompt_details.get("cached_tokens")), prompt)
    written = min(_count(prompt_details.get("cache_write_tokens")), prompt - cached)
    reasoning = min(_count(completion_details.get("reasoning_tokens")), completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )


def reported_cost(usage: object) -> float | None:
    """The gateway's own ``usage.cost`` in USD (OpenRouter sends it), or None."""
    if not isinstance(usage, Mapping):
        return None
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < math.inf:
        return float(cost)
    return None


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(int(value), 0)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}

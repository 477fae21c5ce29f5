"""What routing learns from a served response about providers' prompt caches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limpet.models import Usage
from limpet.providers.cache_minimums import LearnedMinimums
from limpet.providers.prompt_cache import (
    DEFAULT_CAPABILITIES,
    CapabilityTable,
    marked_prefix_tokens,
    model_slug,
)

__all__ = ["learn_minimum"]


def learn_minimum(
    learned: LearnedMinimums,
    body: Mapping[str, Any],
    usage: Usage,
    answered: object = None,
    capabilities: CapabilityTable = DEFAULT_CAPABILITIES,
) -> None:
    """Teach ``learned`` from one response of a model whose cache writes are billed, hence
    reported: silence there means the marked prefix could not cache. ``learned`` and
    ``capabilities`` are those the marks were placed by (the Client's
    ``CacheControlConfig``), so what one Client learns raises only the minimums its own
    marking reads, from the minimum its own table states.

    Only a response that counted its prompt says anything: one without usage (a gateway
    that leaves it out) or with a prompt of 0 tokens (OpenRouter's response-cache hits)
    says nothing of the provider's cache, and taking it for silence would switch off
    marking for the model, process-wide. Nor does one from a model other than the one
    asked for (``answered``, the answer's ``model``; an OpenRouter ``models`` fallback):
    another model's silence says nothing of the requested one's minimum.
    """
    if not usage.reported or usage.prompt_tokens == 0:
        return
    model = body.get("model")
    if not isinstance(model, str) or not _same_model(model, answered):
        return
    capability = capabilities.lookup(model)
    if capability is None or capability.kind != "explicit" or capability.write_multiplier <= 1:
        return
    tokens = marked_prefix_tokens(body)
    if tokens is not None:
        cached = usage.cached_tokens > 0 or usage.cache_write_tokens > 0
        learned.observe(model, tokens, capability.min_tokens, cached=cached)


def _same_model(requested: str, answered: object) -> bool:
    """Whether the answer came from the model asked for, as capability rules name models
    (``model_slug``: a ``:variant`` or a case the gateway dropped is the same model). An
    answer that names none cannot say it was another."""
    if answered is None:
        return True
    return isinstance(answered, str) and model_slug(answered) == model_slug(requested)

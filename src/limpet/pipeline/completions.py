"""From a cache entry to the ``Completion`` a caller gets. Pure."""

from __future__ import annotations

from dataclasses import replace

import orjson

from limpet.cache.base import CacheEntry, servable
from limpet.models import CacheStatus, Completion, Cost, Usage
from limpet.providers.usage import has_usage

__all__ = ["completion_of", "storable"]


def completion_of(
    entry: CacheEntry, status: CacheStatus, key: str | None, *, copy: bool = False
) -> Completion:
    """The ``Completion`` of ``entry`` served as ``status``.

    A hit or coalesced call cost nothing and saved the original call's cost; when that
    cost is unknown (``entry.cost_usd`` is None), so is this call's: ``cost`` is None,
    never a ``Cost`` of zeros.
    """
    body = orjson.loads(orjson.dumps(entry.body)) if copy else entry.body
    usage = replace(entry.usage) if copy else entry.usage
    if entry.cost_usd is None:
        cost: Cost | None = None
        usage = _as_reported(usage, body.get("usage"))
    elif status is CacheStatus.HIT or status is CacheStatus.COALESCED:
        cost = Cost(0.0, entry.cost_usd)
    else:
        cost = Cost(entry.cost_usd)
    # Positional: this runs on every hit, and keywords cost a little more.
    return Completion(body, body.get("model") or "", usage, cost, status, entry.endpoint, key)


def storable(entry: CacheEntry) -> bool:
    """A failed generation reported inside a 200 is never cached (transport raises
    ``APIGenerationError`` for one; this guards every other way an entry is made), nor an
    answer no hit could be served from (it would only ever read back as corrupt)."""
    body = entry.body
    return servable(body) and not any(
        choice.get("finish_reason") == "error" for choice in body["choices"]
    )


def _as_reported(usage: Usage, raw: object) -> Usage:
    """``usage`` marked unreported when the body it came from had none. The entry codec
    keeps counts, not that flag; the body kept beside them tells. Only an entry of unknown
    cost needs the look: a reported usage with a price always has a cost."""
    if usage.reported and not has_usage(raw):
        return replace(usage, reported=False)
    return usage

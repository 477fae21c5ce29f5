"""From a cache entry to the ``Completion`` a caller gets. Pure."""

from __future__ import annotations

from dataclasses import replace

import orjson

from limpet.cache.base import CacheEntry, servable
from limpet.models import CacheStatus, Completion, Cost

__all__ = ["completion_of", "storable"]


def completion_of(
    entry: CacheEntry, status: CacheStatus, key: str | None, *, copy: bool = False
) -> Completion:
    body = orjson.loads(orjson.dumps(entry.body)) if copy else entry.body
    usage = replace(entry.usage) if copy else entry.usage
    if status is CacheStatus.HIT or status is CacheStatus.COALESCED:
        cost: Cost | None = Cost(0.0, entry.cost_usd or 0.0)
    else:
        cost = None if entry.cost_usd is None else Cost(entry.cost_usd)
    # Positional: this runs on every hit, and keywords cost a little more.
    return Completion(body, body.get("model") or "", usage, cost, status, entry.endpoint, key)


def storable(entry: CacheEntry) -> bool:
    """A failed generation reported inside a 200 is never cached, nor an answer no hit
    could be served from (it would only ever read back as corrupt)."""
    body = entry.body
    return servable(body) and body["choices"][0].get("finish_reason") != "error"

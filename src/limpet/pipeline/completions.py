"""From a cache entry to the ``Completion`` a caller gets. Pure."""

from __future__ import annotations

from dataclasses import replace

from limpet.cache.base import CacheEntry
from limpet.models import CacheStatus, Completion, Cost, Usage, shared_completion

__all__ = ["completion_of", "storable"]


def completion_of(
    entry: CacheEntry, status: CacheStatus, key: str | None, tier: int | None = None
) -> Completion:
    """The ``Completion`` of ``entry`` served as ``status`` (a hit: by cache tier
    ``tier``, whoever read it: a storm's callers share one read); for the caller whose own
    upstream call it was (a miss, a bypass: the leader, or the waiter that took the
    flight over), what the provider's prompt cache saved on it (``entry.saved_usd``) is
    shown beside what it cost.

    Every caller of one entry (the leader, coalesced waiters and hits alike) shares its
    one decoded body and usage, and gets its own copy of each (``raw``, ``message``,
    ``usage``) when it first touches it, so none can change what another reads.

    A hit or coalesced call cost nothing and saved the original call's cost; when that
    cost is unknown (``entry.cost_usd`` is None), so is this call's: ``cost`` is None,
    never a ``Cost`` of zeros.
    """
    usage = entry.usage
    cost_usd = entry.cost_usd
    if cost_usd is None:
        cost: Cost | None = None
        usage = _as_reported(usage, entry)
    elif status is CacheStatus.HIT or status is CacheStatus.COALESCED:
        cost = Cost(0.0, cost_usd)
    else:
        saved_usd = entry.saved_usd
        cost = Cost(cost_usd) if saved_usd is None else Cost(cost_usd, saved_usd)
    return shared_completion(entry, entry.model, usage, cost, status, entry.endpoint, key, tier)


def storable(entry: CacheEntry) -> bool:
    """A failed generation reported inside a 200 is never cached (transport raises
    ``APIGenerationError`` for one; this guards every other way an entry is made), nor a
    ``partial`` answer (a choice asked for missing or unfinished), nor an answer no hit
    could be served from (it would only ever read back as corrupt)."""
    return (
        not entry.partial
        and entry.servable
        and not any(choice.get("finish_reason") == "error" for choice in entry.body["choices"])
    )


def _as_reported(usage: Usage, entry: CacheEntry) -> Usage:
    """``usage`` marked unreported when the body it came from had none. Only an entry of
    unknown cost needs the look: a reported usage with a price always has a cost."""
    if usage.reported and not entry.body_has_usage:
        return replace(usage, reported=False)
    return usage

"""Counters of one Client: how calls were served, tokens, dollars spent and saved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from limpet.cache.tiered import TierStats
from limpet.models import CacheStatus, Completion

__all__ = ["Stats"]


@dataclass(slots=True)
class Stats:
    """Live counters of a Client; read them any time, ``as_dict()`` for a snapshot.

    Attributes:
        hits: calls a cache tier answered.
        misses: calls that went upstream for themselves and may be stored.
        coalesced: calls that shared another caller's upstream request.
        bypassed: calls that skipped the cache (policy or ``cache="bypass"``).
        upstream_calls: requests sent upstream (retries of one request count once).
        errors: calls that raised an upstream error.
        prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens: tokens
            billed by upstream calls (hits and coalesced calls bill none).
        cost_usd: dollars spent upstream, where the gateway reported a cost.
        saved_usd: dollars not spent thanks to hits, coalescing and provider prompt caching.
        cache: the response cache's own counters (hits per tier, errors, corrupt entries).
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    bypassed: int = 0
    upstream_calls: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    cache: TierStats = field(default_factory=TierStats)

    @property
    def requests(self) -> int:
        """Calls that returned a completion."""
        return self.hits + self.misses + self.coalesced + self.bypassed

    @property
    def hit_rate(self) -> float:
        """Share of cacheable calls that did not go upstream for themselves: hits and
        coalesced over hits, coalesced and misses; 0.0 before any such call."""
        served = self.hits + self.coalesced
        total = served + self.misses
        return served / total if total else 0.0

    def record(self, completion: Completion) -> None:
        status = completion.cache
        if status is CacheStatus.HIT:
            self.hits += 1
            if completion.cost is not None:
                self.saved_usd += completion.cost.saved_usd
            return
        if status is CacheStatus.COALESCED:
            self.coalesced += 1
        elif status is CacheStatus.MISS:
            self.misses += 1
        else:
            self.bypassed += 1
        if completion.cost is not None:
            self.cost_usd += completion.cost.usd
            self.saved_usd += completion.cost.saved_usd
        if status in (CacheStatus.MISS, CacheStatus.BYPASS):
            usage = completion.usage
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            self.cached_tokens += usage.cached_tokens
            self.cache_write_tokens += usage.cache_write_tokens

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "coalesced": self.coalesced,
            "bypassed": self.bypassed,
            "upstream_calls": self.upstream_calls,
            "errors": self.errors,
            "hit_rate": self.hit_rate,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": self.cost_usd,
            "saved_usd": self.saved_usd,
            "cache_hits_by_tier": list(self.cache.hits),
            "cache_errors": self.cache.errors,
            "cache_corrupt": self.cache.corrupt,
        }

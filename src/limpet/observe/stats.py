"""Counters of one Client: how calls were served, tokens, dollars spent and saved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from limpet.cache.tiered import TierStats
from limpet.models import CacheStatus, Completion, Cost, Usage

if TYPE_CHECKING:
    from limpet.cache.capabilities import GuardedTier
    from limpet.cache.tiered import TieredCache
    from limpet.http.admission import Admissions, AdmissionStats

__all__ = ["Stats"]

# Worst first: the state ``Stats.breaker_state`` reports when tiers disagree.
_BREAKER_SEVERITY = ("open", "half_open", "closed")


class _Tiers:
    """What ``Stats.attach`` learnt of the cache: how many leading tiers answer
    in-process, and the tiers behind a breaker. Live objects, so it is shared rather than
    copied when the stats are (``copy.deepcopy``, ``dataclasses.asdict``)."""

    __slots__ = ("guarded", "local")

    def __init__(self, local: int = 1, guarded: tuple[GuardedTier, ...] = ()) -> None:
        self.local = local
        self.guarded = guarded

    def __copy__(self) -> _Tiers:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Tiers:
        return self


@dataclass(slots=True)
class Stats:
    """Live counters of a Client; read them any time, ``as_dict()`` for a snapshot.

    The counters are plain fields, bumped on every call; the cache's figures
    (``cache_errors``, ``corrupt``, ``breaker_state``, ...) are properties read from the
    cache when asked, so the hit path pays nothing for them.

    Attributes:
        hits: calls a cache tier answered.
        l1_hits, l2_hits: of ``hits``, those answered in-process (the leading
            ``MemoryCache`` tiers) and by a shared tier (Redis): each call once, in the
            tier that answered it (``Completion.tier``), so they add up to ``hits`` even
            when one read answered a storm of identical calls. ``cache.hits`` counts the
            tiers' own reads instead (``embed()`` inputs' too).
        misses: calls that went upstream for themselves and may be stored, or got the
            answer of a call that did and left (each answer a caller got is one miss).
        coalesced: calls that shared another caller's upstream request.
        bypassed: calls that skipped the cache (policy or ``cache="bypass"``).
        upstream_calls: requests sent upstream (retries of one request count once).
        errors: calls that raised an upstream error.
        cancelled: calls that ended with neither an answer nor an upstream error: their
            caller cancelled them (a timeout of its own, a client that hung up, a stream
            closed before its end), or the Client closed under them. What they sent
            upstream counts in ``upstream_calls``, and what it cost where it was answered
            (for the callers left waiting on it, or an ``embed()`` call's other inputs).
        prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens: tokens
            billed by upstream calls, counted as each answer came, whoever was still
            waiting for it (hits and coalesced calls bill none).
        cost_usd: dollars spent upstream, where the cost was known, counted so too.
        saved_usd: dollars not spent thanks to hits, coalescing and provider prompt caching.
        unpriced: calls whose cost is unknown (``Completion.cost`` is None: no usage
            reported, or no price for the model; hits of such a call too; an ``embed()``
            call with a request of unknown cost, returned or raised). ``cost_usd`` and
            ``saved_usd`` leave them out, so they are lower bounds while this is > 0.
        embedding_hits, embedding_misses, embedding_coalesced: ``embed()`` inputs, one
            each (not calls; never in ``hits``/``misses``/``coalesced``): answered by a
            cache tier, sent upstream by their own call, answered by another's request.
        embedding_requests: ``/embeddings`` requests sent upstream.
        cache: the response cache's own counters (hits per tier, errors, corrupt entries).
        admissions: the Client's upstream admission, read by ``endpoints`` (None: off).

    Example:
        >>> client.stats.l2_hits, client.stats.breaker_state
        (120, 'closed')
    """

    hits: int = 0
    misses: int = 0
    coalesced: int = 0
    bypassed: int = 0
    upstream_calls: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    unpriced: int = 0
    embedding_hits: int = 0
    embedding_misses: int = 0
    embedding_coalesced: int = 0
    embedding_requests: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    cache: TierStats = field(default_factory=TierStats)
    _tiers: _Tiers = field(default_factory=_Tiers, init=False, repr=False, compare=False)
    admissions: Admissions | None = field(default=None, repr=False, compare=False)

    def attach(self, cache: TieredCache) -> None:
        """Report on ``cache``: its counters become ``cache``, and its tiers give the
        L1/L2 split and the breaker states. The Client calls this with its cache."""
        self.cache = cache.stats
        self._tiers = _Tiers(cache.local_tiers, cache.guarded_tiers)

    @property
    def endpoints(self) -> dict[str, AdmissionStats]:
        """Per endpoint used so far: its admission limit, requests in flight, callers
        queued, 429s seen and seconds paused; empty when admission is off."""
        return {} if self.admissions is None else self.admissions.stats()

    @property
    def cache_errors(self) -> int:
        """Cache faults absorbed: each a miss or a lost write, never a failed call."""
        return self.cache.errors

    @property
    def corrupt(self) -> int:
        """Entries that did not decode or failed their signature: each a miss, deleted."""
        return self.cache.corrupt

    @property
    def oversized(self) -> int:
        """Answers served but not stored: larger than the cache's ``max_entry_bytes``."""
        return self.cache.oversized

    @property
    def breaker_states(self) -> tuple[str, ...]:
        """The circuit breaker state of each tier that has one (Redis), fastest first."""
        return tuple(tier.breaker_state for tier in self._tiers.guarded)

    @property
    def breaker_state(self) -> str | None:
        """``"closed"``, ``"half_open"`` or ``"open"``: the worst of ``breaker_states``;
        None when no tier has a breaker."""
        states = self.breaker_states
        if not states:
            return None
        return min(states, key=_BREAKER_SEVERITY.index)

    @property
    def failed_cache_writes(self) -> int:
        """Background cache writes that did not land (Redis down, slow, full)."""
        return sum(tier.failed_writes for tier in self._tiers.guarded)

    @property
    def dropped_cache_writes(self) -> int:
        """Background cache writes given up: the queue was full, or ``aclose()`` ran out
        of time before they had landed."""
        return sum(tier.dropped_writes for tier in self._tiers.guarded)

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
        """Count one call that returned ``completion``."""
        status, cost = completion.cache, completion.cost
        if status is CacheStatus.HIT:  # first: the hit path pays for this on every call
            self.hits += 1
            tier = completion.tier
            if tier is not None and tier < self._tiers.local:
                self.l1_hits += 1
            else:
                self.l2_hits += 1
            if cost is None:
                self.unpriced += 1
            else:
                self.saved_usd += cost.saved_usd
            return
        if status is CacheStatus.COALESCED:
            self.coalesced += 1
        elif status is CacheStatus.MISS:
            self.misses += 1
        else:
            self.bypassed += 1
        # What an upstream answer spent (dollars, tokens) was counted as it came
        # (``spent``), whether or not the call that asked for it was still there.
        if cost is None:
            self.unpriced += 1
        else:
            self.saved_usd += cost.saved_usd

    def spent(self, usage: Usage, cost: Cost | None) -> None:
        """Count what one upstream answer cost, as it comes."""
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        if cost is not None:
            self.cost_usd += cost.usd

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
            "cancelled": self.cancelled,
            "hit_rate": self.hit_rate,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": self.cost_usd,
            "saved_usd": self.saved_usd,
            "unpriced": self.unpriced,
            "embedding_hits": self.embedding_hits,
            "embedding_misses": self.embedding_misses,
            "embedding_coalesced": self.embedding_coalesced,
            "embedding_requests": self.embedding_requests,
            "cache_hits_by_tier": list(self.cache.hits),
            "l1_hits": self.l1_hits,
            "l2_hits": self.l2_hits,
            "cache_errors": self.cache.errors,
            "cache_corrupt": self.cache.corrupt,
            "cache_oversized": self.cache.oversized,
            "cache_unwritten": self.cache.unwritten,
            "failed_cache_writes": self.failed_cache_writes,
            "dropped_cache_writes": self.dropped_cache_writes,
            "breaker_state": self.breaker_state,
            "breaker_states": list(self.breaker_states),
            "endpoints": {name: found.as_dict() for name, found in self.endpoints.items()},
        }

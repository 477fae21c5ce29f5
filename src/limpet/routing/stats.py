"""What a router reports: its decisions, health events, and per-key prompt-cache feedback."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from limpet.models import Usage
from limpet.routing.health import HealthState

__all__ = ["DEFAULT_FEEDBACK_KEYS", "EndpointStatus", "KeyFeedback", "RouterStats"]

#: (routing key, endpoint) pairs whose feedback is kept; the least recently used go first.
DEFAULT_FEEDBACK_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One endpoint as the router sees it now.

    Attributes:
        name: the endpoint's name.
        state: ``"healthy"``, ``"ejected"`` or ``"half_open"``.
        in_flight: calls from this process under way there.
        failures: consecutive failures.
        ejected_for: seconds of cool-down left (0 unless ejected).
    """

    name: str
    state: HealthState
    in_flight: int
    failures: int
    ejected_for: float


@dataclass(slots=True)
class KeyFeedback:
    """How one routing key met the prompt cache of one endpoint.

    A key with many ``writes`` and no ``reads`` pays cache-write premiums for nothing:
    its prefix changes every call, expires between calls, or is spread over endpoints.

    Attributes:
        key: the routing key (a prefix hash or a conversation key).
        endpoint: the endpoint's name.
        calls: calls served there with usage.
        writes: calls that wrote to the provider's cache.
        reads: calls that read from it.
        write_tokens: prompt tokens written.
        read_tokens: prompt tokens read.
    """

    key: str
    endpoint: str
    calls: int = 0
    writes: int = 0
    reads: int = 0
    write_tokens: int = 0
    read_tokens: int = 0


@dataclass(slots=True)
class RouterStats:
    """Counters of one ``StickyRouter``.

    Attributes:
        routed: requests routed.
        by_affinity: routed where the affinity map said the prefix is cached.
        by_hash: routed to their key's first HRW choice.
        spilled: moved down their ranking by bounded load (each a likely cache miss).
        failed_over: routed past a first choice that is ejected (or paused by a rate
            limit).
        spread: routed without a key: to the least loaded endpoint, or (a request with
            no prompt, ``embed()``'s) to the first endpoint given.
        retried_elsewhere: calls to an endpoint after the route's first choice failed.
        failures: calls that failed at an endpoint's fault.
        ejections: endpoints ejected.
        recoveries: ejected endpoints back after a successful call.
        store_errors: faults of the shared affinity store (absorbed).
        cached_tokens: prompt tokens read from providers' caches.
        cache_write_tokens: prompt tokens written to them.
        learned_minimums: prompt-cache minimums raised in the table the router teaches
            (``StickyRouter.use_marking``), by model (see
            ``limpet.providers.cache_minimums``).
    """

    routed: int = 0
    by_affinity: int = 0
    by_hash: int = 0
    spilled: int = 0
    failed_over: int = 0
    spread: int = 0
    retried_elsewhere: int = 0
    failures: int = 0
    ejections: int = 0
    recoveries: int = 0
    store_errors: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    learned_minimums: dict[str, int] = field(default_factory=dict)
    max_feedback_keys: int = DEFAULT_FEEDBACK_KEYS
    _feedback: OrderedDict[tuple[str, str], KeyFeedback] = field(
        default_factory=OrderedDict, repr=False
    )

    def counted(self, reason: str) -> None:
        """One request routed for ``reason`` (a ``RouteReason``)."""
        self.routed += 1
        if reason == "affinity":
            self.by_affinity += 1
        elif reason == "hash":
            self.by_hash += 1
        elif reason == "spill":
            self.spilled += 1
        elif reason == "failover":
            self.failed_over += 1
        else:
            self.spread += 1

    def feedback(self, key: str | None, endpoint: str, usage: Usage) -> None:
        """Record how one served call met the provider's cache (``key`` None: a call
        routed without a key, counted in the totals only)."""
        self.cached_tokens += usage.cached_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        if key is None:
            return
        entries = self._feedback
        entry = entries.get((key, endpoint))
        if entry is None:
            entry = entries[key, endpoint] = KeyFeedback(key, endpoint)
            if len(entries) > self.max_feedback_keys:
                entries.popitem(last=False)
        else:
            entries.move_to_end((key, endpoint))
        entry.calls += 1
        if usage.cache_write_tokens:
            entry.writes += 1
            entry.write_tokens += usage.cache_write_tokens
        if usage.cached_tokens:
            entry.reads += 1
            entry.read_tokens += usage.cached_tokens

    def key_feedback(self) -> list[KeyFeedback]:
        """Every (key, endpoint) pair kept, least recently used first."""
        return list(self._feedback.values())

    def write_only(self, min_writes: int = 3) -> list[KeyFeedback]:
        """Keys that wrote to an endpoint's cache ``min_writes`` times or more and never
        read it: cache-write premiums paid for nothing."""
        return [f for f in self._feedback.values() if f.writes >= min_writes and not f.reads]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (per-key feedback summarised)."""
        return {
            "routed": self.routed,
            "by_affinity": self.by_affinity,
            "by_hash": self.by_hash,
            "spilled": self.spilled,
            "failed_over": self.failed_over,
            "spread": self.spread,
            "retried_elsewhere": self.retried_elsewhere,
            "failures": self.failures,
            "ejections": self.ejections,
            "recoveries": self.recoveries,
            "store_errors": self.store_errors,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "write_only_keys": len(self.write_only()),
        }

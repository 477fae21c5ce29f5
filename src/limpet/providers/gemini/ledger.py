"""The storage cost of Gemini's explicit caches, prorated by the second. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from limpet.providers.pricing import storage_cost_usd

__all__ = ["StorageEntry", "StorageLedger"]


@dataclass(slots=True)
class StorageEntry:
    """One cache's storage in the ledger: ``tokens`` stored from ``start`` to ``end``."""

    name: str
    tokens: int
    usd_per_mtok_hour: float
    start: float
    end: float

    def cost_usd(self, now: float) -> float:
        """Storage accrued up to ``now`` (or to its end, when earlier)."""
        return storage_cost_usd(
            self.tokens, min(now, self.end) - self.start, self.usd_per_mtok_hour
        )


class StorageLedger:
    """The storage cost of explicit caches, prorated by the second from creation until they
    expire or are deleted. One ledger may be shared by several ``CachedContents``."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, StorageEntry] = {}

    def __repr__(self) -> str:
        return f"StorageLedger(caches={len(self._entries)})"

    @property
    def entries(self) -> Mapping[str, StorageEntry]:
        """Every cache recorded, by name."""
        return self._entries

    def record(
        self,
        name: str,
        *,
        tokens: int,
        usd_per_mtok_hour: float,
        start: float,
        end: float,
        extend: bool = True,
    ) -> None:
        """Record a cache's storage, or move its end (a TTL update) and token count. An
        ``end`` of ``inf`` (a reply without ``expireTime``: unknown) never replaces one
        known. Without ``extend`` (a cache read, not bought: another instance may have
        bought the time past this ledger's end, and counts it) the end only comes
        earlier."""
        entry = self._entries.get(name)
        if entry is None:
            self._entries[name] = StorageEntry(name, tokens, usd_per_mtok_hour, start, end)
        else:
            entry.tokens = tokens or entry.tokens
            if end != math.inf and (extend or end < entry.end):
                entry.end = end

    def end(self, name: str, at: float) -> None:
        """A cache was deleted at ``at``: storage stops accruing then."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.end = min(entry.end, at)

    def cost_usd(self, now: float) -> float:
        """Storage dollars accrued by every cache up to ``now`` (Unix time)."""
        return sum(entry.cost_usd(now) for entry in self._entries.values())

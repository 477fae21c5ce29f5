"""The generation counters of caches no process shares (no tier keeps generations), kept
with the cache for every Client reading it, so that one's ``invalidate()`` reaches the
others' reads at once (``limpet.cache.generations.Generations`` counts with them)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limpet.cache.generations import Generations

__all__ = ["LocalGenerations", "local_generations_of"]


class LocalGenerations:
    """The generation counters of a cache no process shares (no tier keeps generations),
    for every Client reading its entries.

    Were each Client to count its own from 0, one's ``invalidate()`` would not reach the
    others' reads, and equal counts from two of them would make equal keys: a Client
    invalidating after another had would read the entries the other stored in between.
    """

    __slots__ = ("_into", "_sharers", "values")

    def __init__(self) -> None:
        #: Each generation's value (one never bumped is 0); only ever grows.
        self.values: dict[str, int] = {}
        self._sharers: weakref.WeakSet[Generations] = weakref.WeakSet()
        self._into: LocalGenerations | None = None  # merged into these (``absorb``)

    def share(self, generations: Generations) -> None:
        """Tell ``generations`` of every bump from now on."""
        self._sharers.add(generations)

    def bump(self, name: str) -> int:
        """Bump generation ``name`` for every Client sharing these counters; its new value."""
        value = self.values[name] = self.values.get(name, 0) + 1
        for sharer in self._sharers:
            sharer.bumped_elsewhere()
        return value

    def absorb(self, other: LocalGenerations) -> None:
        """Take ``other``'s Clients and values (the higher of each): a cache was made of
        tiers that each had counters of their own, and now one Client reads them all."""
        for name, value in other.values.items():
            if value > self.values.get(name, 0):
                self.values[name] = value
        other._into = self
        for sharer in list(other._sharers):
            sharer.count_with(self)
        other._sharers = weakref.WeakSet()
        for sharer in self._sharers:
            sharer.bumped_elsewhere()

    def current(self) -> LocalGenerations:
        """These counters, or those they were merged into."""
        found = self
        while found._into is not None:
            found = found._into
        return found


# The counters of each cache and tier Clients were given when none keeps generations.
_HELD: weakref.WeakKeyDictionary[object, LocalGenerations] = weakref.WeakKeyDictionary()


def local_generations_of(holders: Iterable[object]) -> LocalGenerations:
    """The counters of every Client reading any of ``holders`` (a cache and its tiers):
    those any of them holds already (merged into one when several do), else new ones;
    from now on every one of ``holders`` holds them. A holder that cannot be referred to
    weakly (a tier of a class with slots and no ``__weakref__``) holds none."""
    found: list[LocalGenerations] = []
    holders = tuple(holders)
    for holder in holders:
        try:
            held = _HELD.get(holder)
        except TypeError:
            continue
        if held is not None:
            held = held.current()
            if all(held is not other for other in found):
                found.append(held)
    shared = found[0] if found else LocalGenerations()
    for other in found[1:]:
        shared.absorb(other)
    for holder in holders:
        with contextlib.suppress(TypeError):
            _HELD[holder] = shared
    return shared

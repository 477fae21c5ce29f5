"""Where a shared store's generation counter starts when it is missing
(``limpet.cache.generations`` keeps the generations that go into keys; the stores that
keep their counters, Redis and Memcached, create a lost one here).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from limpet.cache.generations import DEFAULT_MAX_TRACKED

__all__ = ["CounterStarts"]


class CounterStarts:
    """Where a shared store's generation counter starts when it is missing, for the stores
    that keep them (``RedisCache``, ``MemcachedCache``).

    A store may lose a counter at any time: evicted by an LRU, gone in a restart without
    persistence or a flush. Were it simply re-created at 0, entries written under its old
    values would be read again after an invalidation, and a process that kept its old
    value would miss every invalidation until the new counter passed it: the one thing
    invalidation must never allow. So a missing counter is created at the current
    wall-clock time in microseconds, or one above the highest value this process saw,
    whichever is higher. Counters only grow by one per invalidation, so a re-created
    counter is above every value it had (short of a million invalidations a second,
    sustained, or one within a microsecond of the counter's creation): losing it costs at
    most the entries of its current generation, and never revives an older one.
    Processes that race to create it must agree on one value (the store creates it only
    if it is still missing, atomically; the losers read the winner's).

    The wall clocks of processes differ, though: one whose clock is behind may re-create a
    lost counter below a value another process holds, which would then miss every
    invalidation until the counter climbed past it. So a counter found below the highest
    value this process saw of it (``floor``) was lost and re-created lower: the store
    raises it to the floor, atomically (never lowers it), and the process takes that as
    an invalidation (the counter may have been bumped from its new start).

    The highest values seen are kept for the ``max_names`` counters seen last.
    """

    __slots__ = ("_seen", "_wall_ns", "max_names")

    def __init__(
        self, max_names: int = 4 * DEFAULT_MAX_TRACKED, wall_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._wall_ns = wall_ns  # this process's wall clock (another one in tests)
        self.max_names = max_names

    def start(self, name: str) -> int:
        """The value to create missing counter ``name`` at."""
        return max(self._wall_ns() // 1000, self._seen.get(name, 0) + 1)

    def floor(self, name: str, value: int) -> int | None:
        """The value counter ``name`` must be raised to when it holds ``value``: one
        above the highest seen, when ``value`` is below that (it was lost and re-created
        lower); else None."""
        seen = self._seen.get(name, 0)
        return seen + 1 if value < seen else None

    def saw(self, name: str, value: int) -> int:
        """Note that counter ``name`` holds ``value``; returns ``value``."""
        seen = self._seen
        if value > seen.get(name, 0):
            seen[name] = value
        if name in seen:
            seen.move_to_end(name)
            if len(seen) > self.max_names:
                seen.popitem(last=False)
        return value

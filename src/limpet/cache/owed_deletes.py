"""The deletes a shared tier owes: keys that must not keep an older value there.

A shared tier that cannot take a delete of a key now (its breaker is open, the server
failed it, a write of the key is on its way and would land after a delete sent now) must
not leave the key's value to be served: a forgotten answer. The key is owed a delete
instead, which the tier's writer sends, after anything of the key already sent or
queued, as soon as the tier takes commands again, and again after each failure (as a
bump of a generation made while the store was down is sent once it is back,
``limpet.cache.generations``).

The keys are bounded, by as many as the write queue holds: an outage must not turn
into a memory leak. Past that bound (more forgotten keys during one outage than the
write queue holds) the tier owes a clear instead (every key under its prefix; on
Memcached, every item on its servers, as ``clear()`` does), since a delete of a key no
longer remembered cannot be sent: such an outage costs the shared tier its contents,
never a stale answer. While a key is owed, or a clear, this process
reads it as a miss. Pure bookkeeping: the write queue (``limpet.cache.writes``) sends.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice

__all__ = ["OwedDeletes"]


class OwedDeletes:
    """Keys owed a delete, oldest first, each with a mark that changes when it is owed
    again (so a delete that landed settles only what it was sent for), and whether a
    clear is owed (``clear_owed``) or being sent (``clearing``).

    Args:
        limit: keys owed at most; one more owes a clear instead.

    Example:
        >>> owed = OwedDeletes(limit=2)
        >>> owed.owe("a"), owed.owe("b"), owed.covers("a"), owed.covers("z")
        (True, True, True, False)
        >>> owed.owe("c"), owed.covers("z"), owed.clear_owed
        (False, True, True)
    """

    __slots__ = ("_keys", "_seq", "active", "clear_owed", "clearing", "limit")

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self._keys: OrderedDict[str, int] = OrderedDict()
        self._seq = 0
        self.clear_owed = False
        self.clearing = False
        #: Whether anything is owed (or a clear is on its way): the one check a read pays
        #: while nothing is.
        self.active = False

    def __len__(self) -> int:
        """Keys owed a delete (a clear owed counts none)."""
        return len(self._keys)

    def covers(self, key: str) -> bool:
        """Whether ``key``'s value in the tier may be one it must not keep."""
        return self.clear_owed or self.clearing or key in self._keys

    def owes(self, key: str) -> bool:
        """Whether ``key`` itself is owed a delete."""
        return key in self._keys

    def mark(self, key: str) -> int | None:
        """``key``'s mark now, or None when it is not owed."""
        return self._keys.get(key)

    def owe(self, key: str) -> bool:
        """Owe a delete of ``key`` (again: a delete sent before this does not settle it).
        False when that took past ``limit``, and a clear is owed instead."""
        keys = self._keys
        if self.clear_owed and not self.clearing:
            return True  # the clear to come covers it
        if key not in keys and len(keys) >= self.limit:
            self.owe_clear()
            return False
        self._seq += 1
        keys[key] = self._seq
        keys.move_to_end(key)
        self.active = True
        return True

    def owe_clear(self) -> None:
        """Owe a clear: it covers every key, so none is kept."""
        self.clear_owed = True
        self._keys.clear()
        self.active = True

    def take(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` oldest keys owed, with their marks, to send (they stay owed until
        ``settle``)."""
        return list(islice(self._keys.items(), count))

    def settle(self, sent: list[tuple[str, int]]) -> None:
        """The deletes ``sent`` landed: those not owed again since are settled."""
        keys = self._keys
        for key, mark in sent:
            if keys.get(key) == mark:
                del keys[key]
        self._update()

    def begin_clear(self) -> int:
        """A clear is being sent; returns the mark it settles up to."""
        self.clear_owed = False
        self.clearing = True
        return self._seq

    def end_clear(self, upto: int, *, landed: bool) -> None:
        """The clear begun at ``upto`` landed (the keys owed before it are settled), or
        is owed again."""
        self.clearing = False
        if landed:
            for key in [k for k, mark in self._keys.items() if mark <= upto]:
                del self._keys[key]
        else:
            self.clear_owed = True
        self._update()

    def _update(self) -> None:
        self.active = bool(self._keys) or self.clear_owed or self.clearing

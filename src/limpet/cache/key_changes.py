"""Which keys a tier had written or deleted lately, so that a read of a lower tier in
flight meanwhile does not copy what it read into that tier.

A ``TieredCache`` read that misses tier 0 awaits a lower tier, then back-fills the tiers
above with what it found. Had a refresh stored a new answer, or a ``forget()`` deleted
the entry, while that read was in flight, the back-fill would put the old answer back in
tier 0, served from there until its TTL ran out (an hour by default) while the shared
tier held the new one, or nothing. Each tier has one ``KeyChanges``, shared by every
cache it is a tier of (``key_changes_of``), so a change made through one cache stops the
back-fill of a read made through another.
"""

from __future__ import annotations

import weakref

__all__ = ["MAX_TRACKED_KEYS", "KeyChanges", "key_changes_of"]

#: Most keys a ``KeyChanges`` tells apart; older changes count as a change of every key.
MAX_TRACKED_KEYS = 4096


class KeyChanges:
    """The latest change of each key lately written or deleted, in a count of changes,
    and the changes under way.

    A read notes ``seq`` before it awaits anything, and back-fills only if
    ``unchanged(key, noted)``. A write or delete runs between ``begin(key)`` and
    ``end(key)``: no read back-fills ``key`` meanwhile (one beginning half-way, tier 0
    written and the shared tier not yet, would read what is being replaced), nor after,
    if it began before the end.

    Example:
        >>> changes = KeyChanges()
        >>> noted = changes.seq
        >>> changes.begin("a")
        >>> changes.unchanged("a", changes.seq), changes.unchanged("b", noted)
        (False, True)
        >>> changes.end("a")
        >>> changes.unchanged("a", noted), changes.unchanged("a", changes.seq)
        (False, True)
    """

    __slots__ = ("_at", "_clearing", "_floor", "_under_way", "max_keys", "seq")

    def __init__(self, max_keys: int = MAX_TRACKED_KEYS) -> None:
        #: Changes begun or ended so far.
        self.seq = 0
        self.max_keys = max_keys
        self._at: dict[str, int] = {}  # key -> ``seq`` of its latest change, oldest first
        # The latest change no longer told apart by key (forgotten, or a clear()).
        self._floor = 0
        self._under_way: dict[str, int] = {}  # key -> its writes and deletes under way
        self._clearing = 0  # clear()s under way

    def begin(self, key: str) -> None:
        """Note a write or delete of ``key`` beginning."""
        self._note(key)
        self._under_way[key] = self._under_way.get(key, 0) + 1

    def end(self, key: str) -> None:
        """Note a write or delete of ``key`` ending (however it ended)."""
        self._note(key)
        left = self._under_way.pop(key) - 1
        if left:
            self._under_way[key] = left

    def begin_clear(self) -> None:
        """Note a change of every key beginning (a clear())."""
        self._note_all()
        self._clearing += 1

    def end_clear(self) -> None:
        """Note a change of every key ending."""
        self._note_all()
        self._clearing -= 1

    def unchanged(self, key: str, since: int) -> bool:
        """Whether ``key`` has had no change since ``seq`` read ``since``, and none is
        under way."""
        return (
            self._floor <= since
            and self._at.get(key, 0) <= since
            and not self._clearing
            and key not in self._under_way
        )

    def _note(self, key: str) -> None:
        self.seq += 1
        at = self._at
        at.pop(key, None)
        at[key] = self.seq
        if len(at) > self.max_keys:
            self._floor = at.pop(next(iter(at)))

    def _note_all(self) -> None:
        self.seq += 1
        self._at.clear()
        self._floor = self.seq


# Each tier's, for every cache it is a tier of.
_HELD: weakref.WeakKeyDictionary[object, KeyChanges] = weakref.WeakKeyDictionary()


def key_changes_of(tier: object) -> KeyChanges:
    """The ``KeyChanges`` of ``tier``, shared by every cache it is a tier of; a new one
    of the caller's own for a tier that cannot be referred to weakly (a class with slots
    and no ``__weakref__``)."""
    try:
        held = _HELD.get(tier)
    except TypeError:
        return KeyChanges()
    if held is None:
        held = _HELD[tier] = KeyChanges()
    return held

"""The cap on distinct model names that metrics and fleet counters are kept by.

The model is the caller's to choose (any string, through ``limpet serve`` any client's), so
a table keyed by it grows with every name it is sent. The first ``MAX_MODELS`` names a
table sees keep their own rows; every later one is counted under ``OTHER_MODEL``.
"""

from __future__ import annotations

__all__ = ["MAX_MODELS", "OTHER_MODEL", "ModelCap"]

#: Distinct model names a table keeps rows for; later names count under ``OTHER_MODEL``.
MAX_MODELS = 1000
#: The row (label value) of the models past the cap.
OTHER_MODEL = "other"


class ModelCap:
    """The first ``MAX_MODELS`` model names seen, each its own row; the rest, ``OTHER_MODEL``.

    ``folded`` counts the calls that were given ``OTHER_MODEL`` for want of room.

    Example:
        >>> cap = ModelCap(limit=1)
        >>> cap.row("a"), cap.row("b"), cap.row("a"), cap.folded
        ('a', 'other', 'a', 1)
    """

    __slots__ = ("_seen", "folded", "limit")

    def __init__(self, *, limit: int = MAX_MODELS) -> None:
        self.limit = limit
        self.folded = 0
        self._seen: set[str] = set()

    def row(self, model: str) -> str:
        """The row ``model`` is counted under."""
        seen = self._seen
        if model in seen:
            return model
        if len(seen) < self.limit:
            seen.add(model)
            return model
        self.folded += 1
        return OTHER_MODEL

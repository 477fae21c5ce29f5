"""An endpoint's places on the wire (its ``max_in_flight`` and the connection pool), held
together by its own admission and by those of the calls that bring their own keys."""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from limpet.config import Endpoint

if TYPE_CHECKING:
    from limpet.http.admission import Admission

__all__ = ["Wire", "wire_limit"]


class Wire:
    """The places on the wire to one endpoint (``Endpoint.max_in_flight``, and the HTTP
    connection pool), held together by its own admission and those of the calls that
    bring their own keys: each admission keeps its own FIFO line, limit and pause, and
    one whose next caller waits for one of these places alone waits in line here, the
    lines taking turns as places come free.

    Args:
        limit: the places (``math.inf``: no bound).
    """

    __slots__ = ("_lines", "in_flight", "limit", "serving")

    def __init__(self, limit: float = math.inf) -> None:
        self.limit = limit
        self.in_flight = 0
        self._lines: deque[Admission] = deque()
        #: The admission whose turn it is (``freed``), or None.
        self.serving: Admission | None = None

    def full_for(self, admission: Admission) -> bool:
        """Whether ``admission``'s next caller must wait for a place: none is free, or
        other lines wait for one and it is not ``admission``'s turn (a place that comes
        free goes to the lines in turn, never back to whoever released it)."""
        if self.in_flight >= self.limit or (self._lines and self.serving is not admission):
            self.wait(admission)
            return True
        return False

    def wait(self, admission: Admission) -> None:
        """``admission``'s next caller waits for a place (once in line, however often
        asked)."""
        if not admission.on_wire_line:
            admission.on_wire_line = True
            self._lines.append(admission)

    def freed(self) -> None:
        """Places came free: the lines waiting for one take their turns while any is left."""
        lines = self._lines
        while lines and self.in_flight < self.limit:
            admission = lines.popleft()
            admission.on_wire_line = False
            self.serving = admission
            try:
                admission.dispatch()
            finally:
                self.serving = None


def wire_limit(endpoint: Endpoint, pool: int) -> float:
    """The places on the wire to ``endpoint``: its ``max_in_flight`` and the connection
    ``pool`` (0: unbounded), whichever is fewer."""
    limit = float(pool) if pool else math.inf
    cap = endpoint.max_in_flight
    return min(limit, cap) if cap is not None else limit

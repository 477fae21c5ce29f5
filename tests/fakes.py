"""Test doubles that are cheaper than the real thing and just as honest: clocks."""

from __future__ import annotations

#: Seconds the ``breaker`` fixture's circuit breaker (tests/conftest.py) stays open
#: before it half-opens: the fault tests advance a ``FakeClock`` by it.
COOLDOWN = 2.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""Single-flight: one upstream call per key, however many callers miss at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[T]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Runs one call per key at a time; concurrent callers of a key share its result.

    The first caller of a key starts the call as a task of its own; every caller, the
    first included, awaits it through ``asyncio.shield``, so cancelling one caller never
    cancels the call the others wait on. An exception reaches every caller and is not
    remembered: the next call for the key starts afresh. When the last caller is gone,
    the flight is forgotten first (so a newcomer starts a fresh call rather than joining
    a dying one) and then, with ``cancel_orphans``, the call is cancelled.

    Args:
        cancel_orphans: cancel a call nobody waits for any more; False lets it finish
            (and fill the cache) in the background.

    Example:
        >>> flight: SingleFlight[bytes] = SingleFlight()
        >>> body, led = await flight.do(key, lambda: fetch(key))
    """

    __slots__ = ("_flights", "cancel_orphans")

    def __init__(self, *, cancel_orphans: bool = True) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        self.cancel_orphans = cancel_orphans

    def __len__(self) -> int:
        """Keys in flight."""
        return len(self._flights)

    async def do(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of ``call()`` for ``key``, shared with concurrent callers.

        Returns:
            The result, and True for the caller whose ``call`` ran (the leader).
        """
        flight = self._flights.get(key)
        leader = flight is None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(call()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task: self._land(key, flight, task))
        flight.waiters += 1
        try:
            result = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._forget(key, flight)
                if self.cancel_orphans:
                    flight.task.cancel()
            raise
        except BaseException:
            flight.waiters -= 1
            raise
        flight.waiters -= 1
        return result, leader

    def _land(self, key: str, flight: _Flight[T], task: asyncio.Future[T]) -> None:
        self._forget(key, flight)
        # An orphaned call that failed has no one to tell; mark it seen so asyncio does not
        # log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

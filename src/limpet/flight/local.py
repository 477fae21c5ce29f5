"""Single-flight in this process: one call per key, however many callers miss at once.

Across processes, ``limpet.flight.shared.RedisFlight`` runs behind it, so that one caller
per process takes part there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Generic, TypeVar

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

    A failure that ``retry_if`` accepts (a retryable one) may promote one waiter to try
    once more: every waiter of the failed call may start a new one, and the first to do
    so leads it while the others join it. Each waiter does this at most ``promotions``
    times; the leader of the failed call gets its error.

    A caller bounds its own wait (``asyncio.timeout`` around ``do``): when it expires,
    that caller leaves and the call goes on for the others.

    Args:
        cancel_orphans: cancel a call nobody waits for any more; False lets it finish
            (and fill the cache) in the background.
        retry_if: which failures a waiter may retry; None: none.
        promotions: how often one waiter may retry.

    Example:
        >>> flight: SingleFlight[bytes] = SingleFlight()
        >>> body, led = await flight.do(key, lambda: fetch(key))
    """

    __slots__ = ("_flights", "_running", "cancel_orphans", "promotions", "retry_if")

    def __init__(
        self,
        *,
        cancel_orphans: bool = True,
        retry_if: Callable[[BaseException], bool] | None = None,
        promotions: int = 1,
    ) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        # Every call not yet done, forgotten ones included (a cancelled orphan unwinding).
        self._running: set[asyncio.Future[T]] = set()
        self.cancel_orphans = cancel_orphans
        self.retry_if = retry_if
        self.promotions = promotions

    def __len__(self) -> int:
        """Keys in flight."""
        return len(self._flights)

    async def do(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of ``call()`` for ``key``, shared with concurrent callers.

        Returns:
            The result, and True for the caller whose ``call`` ran (the leader).
        """
        promotions = self.promotions if self.retry_if is not None else 0
        while True:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight(asyncio.ensure_future(call()))
                self._flights[key] = flight
                self._running.add(flight.task)
                # Added first, so it runs before any waiter wakes: a promoted waiter
                # never finds the failed flight still registered.
                flight.task.add_done_callback(partial(self._land, key, flight))
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
            except Exception as exc:
                flight.waiters -= 1
                if leader or promotions <= 0 or not (self.retry_if and self.retry_if(exc)):
                    raise
                promotions -= 1
                continue
            except BaseException:
                flight.waiters -= 1
                raise
            flight.waiters -= 1
            return result, leader

    async def aclose(self) -> None:
        """Cancel the calls still running and wait until they have unwound (their
        ``finally`` blocks release what they hold)."""
        # Not the forgotten ones: they were cancelled already, and a second cancellation
        # would interrupt their clean-up (a lease release, say).
        for flight in list(self._flights.values()):
            flight.task.cancel()
        running = list(self._running)
        if running:
            await asyncio.wait(running)

    def _land(self, key: str, flight: _Flight[T], task: asyncio.Future[T]) -> None:
        self._running.discard(task)
        self._forget(key, flight)
        # An orphaned call that failed has no one to tell; mark it seen so asyncio does not
        # log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

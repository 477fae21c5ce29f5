"""Places for a shared tier's commands on the connections its client may open: a burst of
commands waits for one in this process, and that wait is no part of any budget.

A client with a fixed number of connections (emcache's pools, a Redis Cluster client's)
makes every command past them wait inside the client, where the wait counts against the
command's budget: five hundred concurrent misses took five hundred Memcached leases at
once, most of them timed out waiting for one of 32 connections, and the breaker took a
healthy local Memcached for down (nothing was stored; the same burst again went upstream
whole). Here the wait is marked ``queueing()`` (``limpet.cache.budget``): the budget
counts from the moment a place is held, and the wait keeps a bound of its own
(``QueueTimeout``: nothing was sent, and the server is not to blame).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from types import TracebackType

from limpet.cache.budget import queueing

__all__ = ["ConnectionSlots"]


class ConnectionSlots:
    """``count`` places, first come first served; ``async with slots:`` holds one, or
    ``take()`` (``take_now()`` first, for a caller that would rather not make a
    coroutine for a free place) and ``give_back()`` when a place outlives its taker (a
    Memcached command that goes on after its caller left).

    Args:
        count: how many commands may be on the wire at once (>= 1).
    """

    __slots__ = ("_waiting", "count", "held")

    def __init__(self, count: int) -> None:
        self.count = max(count, 1)
        #: Places held now (one handed to a waiter that has yet to resume included).
        self.held = 0
        # Those waiting for a place, in order; only while every place is held.
        self._waiting: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        """Hold a place if one is free (and nobody waits for one): True; else False, and
        nothing is held."""
        if self.held < self.count and not self._waiting:
            self.held += 1
            return True
        return False

    async def take(self) -> None:
        """Hold a place, waiting (in this process: no server time) while none is free."""
        if self.take_now():
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(place)
        with queueing():
            try:
                await place
            except asyncio.CancelledError:
                if place.cancelled():
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(place)
                else:
                    self.give_back()  # handed one just as it was cancelled: the next's
                raise

    def give_back(self) -> None:
        """Free a place ``take()`` held: handed to the first still waiting, if any."""
        waiting = self._waiting
        while waiting:
            place = waiting.popleft()
            if not place.done():
                place.set_result(None)
                return
        self.held -= 1

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.give_back()

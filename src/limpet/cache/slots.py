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
from types import TracebackType

from limpet.cache.budget import queueing

__all__ = ["ConnectionSlots"]


class ConnectionSlots:
    """``count`` places, first come first served; ``async with slots:`` holds one, or
    ``take()`` and ``give_back()`` when a place outlives its taker (a Memcached command
    that goes on after its caller left).

    Args:
        count: how many commands may be on the wire at once (>= 1).
    """

    __slots__ = ("_free", "count", "held")

    def __init__(self, count: int) -> None:
        self.count = max(count, 1)
        #: Places held now.
        self.held = 0
        self._free = asyncio.Semaphore(self.count)

    async def take(self) -> None:
        """Hold a place, waiting (in this process: no server time) while none is free."""
        if self._free.locked():
            with queueing():
                await self._free.acquire()
        else:
            await self._free.acquire()  # free: taken without yielding
        self.held += 1

    def give_back(self) -> None:
        """Free a place ``take()`` held."""
        self.held -= 1
        self._free.release()

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.give_back()

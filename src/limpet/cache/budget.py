"""Budgets counted in the server's time: how a remote tier bounds each call.

A budget of 50 ms for a read should measure the server, not the time this process spends
on other work: a loop busy with other callers for a while must not be taken for a slow
Redis (an invariant: a healthy shared tier is never taken for down). So a budget is
counted in steps, and each check counts the time since the last one but never more than
a step: a check that runs late ran late because the loop was busy (or the process was
not scheduled), not because the server was. And a budget runs out only at a check that
ran on time, when the loop has just had its chance to read a reply that came in while it
was busy. A loop that never catches up still gives up after 20 budgets of wall time.

One ``Watchdog`` per cache does those checks for every call in flight with one timer,
re-armed once a step while calls are in flight rather than once per call: arming and
cancelling a timer for each read cost a hit ~10 us, about as much as the rest of limpet's
read path.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Bounded", "Watchdog", "server_deadline"]

# The budget is counted in steps of budget / _STEPS; one loop tick counts at most a step.
_STEPS = 4
# A loop that never catches up still ends the wait after this many budgets of wall time.
_MAX_STRETCH = 20
_EPSILON = 1e-9


def server_deadline(budget: float) -> Bounded:
    """Like ``asyncio.timeout(budget)``, but time the event loop spends elsewhere is not
    counted against the server: ``async with server_deadline(0.05): await redis.get(k)``
    (a watchdog of its own; a cache shares one, ``Watchdog.bound``).

    Raises:
        TimeoutError: (on leaving the block) the budget was spent.
    """
    return Watchdog(budget).bound(budget)


class Watchdog:
    """Checks the budgets of every call in flight, ``budget / 4`` apart, with one timer.

    The timer runs while a call is in flight: the first call to enter arms it, and a
    check that finds no call left lets it lapse.

    Args:
        budget: the smallest budget its calls use (a step is a quarter of it).

    Example:
        >>> watchdog = Watchdog(0.05)
        >>> async with watchdog.bound(0.05):
        ...     value = await redis.get(key)
    """

    __slots__ = ("_bounds", "_due", "_handle", "_loop", "_step")

    def __init__(self, budget: float) -> None:
        self._step = budget / _STEPS
        self._bounds: set[Bounded] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def bound(self, budget: float) -> Bounded:
        """A context manager that ends its block with ``TimeoutError`` once ``budget``
        seconds of the server's time are spent."""
        return Bounded(self, budget)

    def _enter(self, bound: Bounded, loop: asyncio.AbstractEventLoop, now: float) -> None:
        if self._loop is not loop:
            # First use, or used from another loop now: what the old one ran is gone.
            self._loop, self._handle = loop, None
            self._bounds.clear()
        self._bounds.add(bound)
        if self._handle is None:
            self._due = now + min(self._step, bound.budget / _STEPS)
            self._handle = loop.call_at(self._due, self._check)

    def _leave(self, bound: Bounded) -> None:
        self._bounds.discard(bound)

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        bounds = self._bounds
        if not bounds:
            self._handle = None
            return
        now = loop.time()
        on_time = now - self._due <= self._step / 2
        wait = self._step
        for bound in list(bounds):
            left = bound.count(now, on_time)
            if left is None:
                bounds.discard(bound)
            else:
                # Spent but late: look again shortly, once the loop has read what came in.
                wait = min(wait, left if left > _EPSILON else bound.budget / _STEPS / 4)
        if not bounds:
            self._handle = None
            return
        self._due = now + wait
        self._handle = loop.call_at(self._due, self._check)


class Bounded:
    """``Watchdog.bound()``: one call's budget; the check that finds it spent cancels the
    call's task, which leaves the block as ``TimeoutError`` (as ``asyncio.timeout`` does,
    whose bookkeeping of cancellations this follows)."""

    __slots__ = (
        "_cancelling",
        "_expired",
        "_last",
        "_left",
        "_started",
        "_task",
        "_watchdog",
        "budget",
    )

    def __init__(self, watchdog: Watchdog, budget: float) -> None:
        self._watchdog = watchdog
        self.budget = self._left = budget
        self._expired = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a budget must be counted inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        loop = asyncio.get_running_loop()
        self._started = self._last = now = loop.time()
        self._watchdog._enter(self, loop, now)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._watchdog._leave(self)
        if (
            self._expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc

    def count(self, now: float, on_time: bool) -> float | None:
        """Count the time since the last check (at most a step); the budget left, or None
        once it ran out (the task is cancelled: ``TimeoutError`` on leaving the block)."""
        step = self.budget / _STEPS
        spent = min(now - self._last, step)
        self._last = now
        self._left = left = self._left - spent
        if left <= _EPSILON and (on_time or now - self._started >= self.budget * _MAX_STRETCH):
            self._expired = True
            self._task.cancel()
            return None
        return left

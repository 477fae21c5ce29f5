"""Budgets counted in the server's time: how a remote tier bounds each call.

A budget of 50 ms for a read should measure the server, not the time this process spends
on other work: a loop busy with other callers for a while must not be taken for a slow
Redis (an invariant: a healthy shared tier is never taken for down). So a budget is
counted in steps, and each check counts the time since the last one but never more than
a step: a check that runs late ran late because the loop was busy (or the process was
not scheduled), not because the server was. And a budget runs out only at a check that
ran on time, when the loop has just had its chance to read a reply that came in while it
was busy. A loop that never catches up still gives up after 20 budgets of wall time.

Nor does a loop that is busy but keeps up count wholly as the server's time: each check
counts the share of the step the loop's thread spent idle (wall time less the time it ran
or waited for a CPU, ``thread_busy()``), for a loop that was never idle would have read a
reply had one come, or is still working through those that did; but never less than a
quarter of it, so that a server that stopped answering is still found within four budgets
of a loop kept busy by other callers (and the breaker opens), not one taken for healthy
for as long as the loop is busy. And once the server has failed (``Watchdog(failing=)``:
its breaker has a failure streak), each step counts whole again, so an outage is found as
fast as in an idle loop while a healthy server keeps the benefit of the doubt. A burst of
five hundred misses keeps the loop busy in short ticks, every check on time, while one
MGET's task waits for its turns behind the others; counted in wall time, a healthy Redis
Cluster was taken for slow.

Nor is the server at work while a call waits for something of this process's own: a free
connection of a pool that a burst of this process's calls holds. A pool marks that wait
with ``queueing()`` (and ``connection_held()`` once it has one), and a budget counts
nothing meanwhile, so the budget starts once a connection is held. The wait has a bound
of its own, 20 budgets of wall time, past which the call ends with ``QueueTimeout``
(nothing was sent: the server has nothing to answer for).

Nor does opening a connection fit in one command's budget when the server is some
milliseconds away: the handshake and the client's setup commands are a few round trips
more. A call that connects (``connecting()``) gets ``CONNECT_BUDGETS`` more budgets, but
not while the server is failing (a streak: a slow server is found as fast as ever),
except for the breaker's probe, or a breaker opened by one outage would never close.

One ``Watchdog`` per cache does those checks for every call in flight with one timer,
re-armed once a step while calls are in flight rather than once per call: arming and
cancelling a timer for each read cost a hit ~10 us, about as much as the rest of limpet's
read path.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from limpet.cache.loop_idle import thread_busy

__all__ = [
    "CONNECT_BUDGETS",
    "Bounded",
    "QueueTimeout",
    "Queueing",
    "Watchdog",
    "connecting",
    "connection_held",
    "queueing",
    "server_deadline",
]

# The budget is counted in steps of budget / _STEPS; one loop tick counts at most a step.
_STEPS = 4
# A loop that never catches up still ends the wait after this many budgets of wall time.
_MAX_STRETCH = 20
# The least share of a step a check counts, however busy the loop was (see above).
_MIN_IDLE_SHARE = 0.25
# A wait in this process (for a pooled connection) ends after this many budgets of wall time.
_MAX_QUEUE = 20
_EPSILON = 1e-9

# Every watchdog alive, for a pool to find the budgets of the task waiting on it (found
# only when a task waits: the hit path registers nothing more than its budget).
_watchdogs: weakref.WeakSet[Watchdog] = weakref.WeakSet()
# The tasks waiting in this process now (``queueing()``).
_queueing: set[asyncio.Task[Any]] = set()


class QueueTimeout(TimeoutError):
    """A call waited longer than its bound for a connection of this process's own (a
    pool held by a burst of its calls): nothing was sent, and the server is not to blame."""


def server_deadline(budget: float) -> Bounded:
    """Like ``asyncio.timeout(budget)``, but time the event loop spends elsewhere is not
    counted against the server: ``async with server_deadline(0.05): await redis.get(k)``
    (a watchdog of its own; a cache shares one, ``Watchdog.bound``).

    Raises:
        TimeoutError: (on leaving the block) the budget was spent.
    """
    return Watchdog(budget).bound(budget)


def queueing() -> Queueing:
    """While its block runs, the current call waits in this process (for a free pooled
    connection), and its budget counts no server time; the wait is bounded on its own
    (``QueueTimeout``). Outside a budget it does nothing.

    Example:
        >>> async with watchdog.bound(0.05):
        ...     with queueing():
        ...         connection = await pool.wait_for_free()
        ...     await connection.send(command)  # counted from here
    """
    return Queueing()


class Queueing:
    """``queueing()``: the context manager that marks a wait in this process."""

    __slots__ = ()

    def __enter__(self) -> None:
        task = asyncio.current_task()
        if task is None or task in _queueing:
            return
        _queueing.add(task)
        now = asyncio.get_running_loop().time()
        for watchdog in _watchdogs:
            watchdog.queue(task, now)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        connection_held()


def connection_held() -> None:
    """The current task's wait in ``queueing()`` is over (it holds a connection, and goes
    on to connect it, which is the server's time): its budgets count from now."""
    if not _queueing:
        return
    task = asyncio.current_task()
    if task not in _queueing:
        return
    _queueing.discard(task)
    now = asyncio.get_running_loop().time()
    for watchdog in _watchdogs:
        watchdog.serve(task, now)


#: The budgets a call that must first open its connection gets on top of its own: the
#: handshake and the client's setup commands (HELLO, AUTH, CLIENT SETINFO, SELECT) are
#: as many round trips again as the command itself.
CONNECT_BUDGETS = 4


def connecting() -> None:
    """The current task opens a connection before sending its command: each of its
    budgets gets ``CONNECT_BUDGETS`` more of itself (``Watchdog.connecting``). Else a
    server some 15 ms away, whose commands fit their budget, would be taken for down at
    every new connection: the setup spends the budget, the command is cut short, which
    closes its connection, and the next call connects again (the breaker opens, and
    never closes)."""
    task = asyncio.current_task()
    if task is not None:
        for watchdog in _watchdogs:
            watchdog.connecting(task)


class Watchdog:
    """Checks the budgets of every call in flight, ``budget / 4`` apart, with one timer.

    The timer runs while a call is in flight: the first call to enter arms it, and a
    check that finds no call left lets it lapse.

    Args:
        budget: the smallest budget its calls use (a step is a quarter of it).
        failing: whether the server has failed lately (its breaker's streak): then each
            step counts whole, however busy the loop was, and a call that connects gets
            no allowance for it, so that a slow server is found as fast as ever...
        probing: ...unless the call is the breaker's probe: whether it is probing now.

    Example:
        >>> watchdog = Watchdog(0.05)
        >>> async with watchdog.bound(0.05):
        ...     value = await redis.get(key)
    """

    __slots__ = (
        "__weakref__",
        "_bounds",
        "_busy",
        "_checked",
        "_due",
        "_failing",
        "_handle",
        "_loop",
        "_nested",
        "_probing",
        "_queued",
        "_step",
    )

    def __init__(
        self,
        budget: float,
        failing: Callable[[], bool] | None = None,
        probing: Callable[[], bool] | None = None,
    ) -> None:
        self._step = budget / _STEPS
        self._failing = failing
        self._probing = probing
        # The budget of each task in flight, found by its task when the task waits in
        # this process; a task's second one, within its first, is kept apart.
        self._bounds: dict[asyncio.Task[Any], Bounded] = {}
        self._nested: set[Bounded] = set()
        # The budgets waiting in this process (``queueing()``), and since when: kept
        # here rather than on each budget, so the hit path pays nothing for them.
        self._queued: dict[Bounded, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        # When the last check ran (or the timer was armed), and ``thread_busy()`` then:
        # the loop thread's idle share since is the share of each step counted.
        self._checked = 0.0
        self._busy = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        _watchdogs.add(self)

    def bound(self, budget: float) -> Bounded:
        """A context manager that ends its block with ``TimeoutError`` once ``budget``
        seconds of the server's time are spent."""
        return Bounded(self, budget)

    def queue(self, task: asyncio.Task[Any] | None, now: float) -> None:
        """``task``'s budgets here wait in this process from ``now``: none is counted."""
        for bound in self._bounds_of(task):
            self._queued.setdefault(bound, now)

    def connecting(self, task: asyncio.Task[Any]) -> None:
        """``task`` opens a connection: its budgets here get ``CONNECT_BUDGETS`` more of
        themselves, unless the server is failing and this is no probe."""
        failing, probing = self._failing, self._probing
        if failing is not None and failing() and not (probing is not None and probing()):
            return
        for bound in self._bounds_of(task):
            bound.extend(bound.budget * CONNECT_BUDGETS)

    def serve(self, task: asyncio.Task[Any] | None, now: float) -> None:
        """``task``'s wait is over at ``now`` (again: a no-op): its budgets here count
        the server's time from then, and so does the wall-time bound on it."""
        if self._queued:
            for bound in self._bounds_of(task):
                if self._queued.pop(bound, None) is not None:
                    bound.restart(now)

    def _bounds_of(self, task: asyncio.Task[Any] | None) -> list[Bounded]:
        first = self._bounds.get(task) if task is not None else None
        found = [first] if first is not None else []
        if self._nested:
            found.extend(bound for bound in self._nested if bound.task is task)
        return found

    def _enter(self, bound: Bounded, loop: asyncio.AbstractEventLoop, now: float) -> None:
        if self._loop is not loop:
            # First use, or used from another loop now: what the old one ran is gone.
            self._loop, self._handle = loop, None
            self._bounds.clear()
            self._nested.clear()
            self._queued.clear()
        if self._bounds.setdefault(bound.task, bound) is not bound:
            self._nested.add(bound)
        if self._handle is None:
            self._checked, self._busy = now, thread_busy()
            self._due = now + min(self._step, bound.budget / _STEPS)
            self._handle = loop.call_at(self._due, self._check)

    def _leave(self, bound: Bounded) -> None:
        held = self._bounds.pop(bound.task, None)
        if held is not bound or self._nested or self._queued:
            self._reseat(bound, held)

    def _reseat(self, bound: Bounded, held: Bounded | None) -> None:
        """What is left once ``bound`` leaves, when it waited in this process or budgets
        were nested (``held`` was its task's first one): the first stays first, or a
        budget of its task still in flight takes its place."""
        self._queued.pop(bound, None)
        nested, task = self._nested, bound.task
        nested.discard(bound)
        if held is not None and held is not bound:
            self._bounds[task] = held
            return
        for other in nested:
            if other.task is task:
                nested.discard(other)
                self._bounds[task] = other
                return

    def _check(self) -> None:
        loop = self._loop
        assert loop is not None
        bounds, nested, queued = self._bounds, self._nested, self._queued
        if not bounds:
            self._handle = None
            return
        now, busy = loop.time(), thread_busy()
        on_time = now - self._due <= self._step / 2
        failing = self._failing
        idle = (
            1.0
            if failing is not None and failing()
            else _idle_share(now - self._checked, busy - self._busy)
        )
        self._checked, self._busy = now, busy
        wait = self._step
        for bound in [*bounds.values(), *nested]:
            since = queued.get(bound) if queued else None
            left = (
                bound.count(now, on_time, idle) if since is None else bound.count_queued(now, since)
            )
            if left is None:
                self._leave(bound)
            else:
                # Spent but late: look again shortly, once the loop has read what came in.
                wait = min(wait, left if left > _EPSILON else bound.budget / _STEPS / 4)
        if not bounds:
            self._handle = None
            return
        self._due = now + wait
        self._handle = loop.call_at(self._due, self._check)


def _idle_share(wall: float, busy: float) -> float:
    """The share of ``wall`` seconds the loop's thread spent idle, having been ``busy``
    (``thread_busy()``) for that many of them, and at least ``_MIN_IDLE_SHARE`` (up to
    1)."""
    if wall <= 0:
        return 1.0
    return min(max(1.0 - busy / wall, _MIN_IDLE_SHARE), 1.0)


class Bounded:
    """``Watchdog.bound()``: one call's budget; the check that finds it spent cancels the
    call's task, which leaves the block as ``TimeoutError`` (as ``asyncio.timeout`` does,
    whose bookkeeping of cancellations this follows), or ``QueueTimeout`` when it was
    the wait in this process that ran out."""

    __slots__ = (
        "_cancelling",
        "_expired",
        "_last",
        "_left",
        "_started",
        "_watchdog",
        "budget",
        "task",
    )

    def __init__(self, watchdog: Watchdog, budget: float) -> None:
        self._watchdog = watchdog
        self.budget = self._left = budget
        # What the block ends with once a check found the budget spent, or None.
        self._expired: type[TimeoutError] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a budget must be counted inside a task")
        self.task = task
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
        expired = self._expired
        if (
            expired is not None
            and exc_type is asyncio.CancelledError
            and self.task.uncancel() <= self._cancelling
        ):
            raise expired from exc

    def count(self, now: float, on_time: bool, idle: float) -> float | None:
        """Count the time since the last check (at most a step), the ``idle`` share of
        it (the loop's idle share since the last check); the budget left, or None once it
        ran out (the task is cancelled: ``TimeoutError`` on leaving the block)."""
        step = self.budget / _STEPS
        spent = min(now - self._last, step) * idle
        self._last = now
        self._left = left = self._left - spent
        if (left <= _EPSILON and on_time) or now - self._started >= self.budget * _MAX_STRETCH:
            self._expire(TimeoutError)
            return None
        return left

    def count_queued(self, now: float, since: float) -> float | None:
        """Count nothing: the call has waited in this process since ``since``. A step, or
        None once that wait ran out (``QueueTimeout`` on leaving the block)."""
        self._last = now
        if now - since < self.budget * _MAX_QUEUE:
            return self.budget / _STEPS
        self._expire(QueueTimeout)
        return None

    def extend(self, seconds: float) -> None:
        """``seconds`` more of the server's time (``connecting()``)."""
        self._left += seconds
        self._started += seconds

    def restart(self, now: float) -> None:
        """The wait in this process ended at ``now``: the server's time counts from here."""
        self._started = self._last = now

    def _expire(self, ending: type[TimeoutError]) -> None:
        self._expired = ending
        self.task.cancel()

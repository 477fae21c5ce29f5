"""Single-flight in this process: one call per key, however many callers miss at once.

Across processes, ``limpet.flight.shared.RedisFlight`` runs behind it, so that one caller
per process takes part there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Args = TypeVarTuple("Args")


class _Flight(Generic[T]):
    """One call in flight and the futures its callers await (one each, so that cancelling
    a caller cancels its own future, never the call). It is its task's done callback: it
    lands the call's end on its ``SingleFlight``. Its result's one claim goes to
    ``claimant``: the first caller still waiting when it landed (the leader, unless it
    left)."""

    __slots__ = ("claimant", "key", "owner", "task", "waiters")

    def __init__(self, owner: SingleFlight[T], key: str, task: asyncio.Future[T]) -> None:
        self.owner = owner
        self.key = key
        self.task = task
        self.waiters: list[asyncio.Future[T]] = []
        self.claimant: asyncio.Future[T] | None = None

    def __call__(self, task: asyncio.Future[T]) -> None:
        self.owner._land(self.key, self, task)


# The context the flights' done callbacks run in: they read no context variable, and a
# callback given none would copy the current context, once per call.
_LANDING = contextvars.Context()


class SingleFlight(Generic[T]):
    """Runs one call per key at a time; concurrent callers of a key share its result.

    The first caller of a key starts the call as a task of its own; every caller, the
    first included, awaits a future of its own that the call's end settles (a lighter
    ``asyncio.shield``), so cancelling one caller never cancels the call the others wait
    on. An exception reaches every caller and is not
    remembered: the next call for the key starts afresh. When the last caller is gone,
    the flight is forgotten first (so a newcomer starts a fresh call rather than joining
    a dying one) and then, with ``cancel_orphans``, the call is cancelled.

    A failure that ``retry_if`` accepts (a retryable one) may promote one waiter to try
    once more: every waiter of the failed call may start a new one, and the first to do
    so leads it while the others join it. Each waiter does this at most ``promotions``
    times, not counting failures ``free_if`` accepts (the leader's own deadline ended a
    call that never reached upstream: a waiter that set none must not pay for it); the
    leader of the failed call gets its error.

    A caller bounds its own wait (``asyncio.timeout`` around ``do``): when it expires,
    that caller leaves and the call goes on for the others.

    Args:
        cancel_orphans: cancel a call nobody waits for any more; False lets it finish
            (and fill the cache) in the background.
        retry_if: which failures a waiter may retry; None: none.
        promotions: how often one waiter may retry.
        free_if: which of those a waiter retries without using up a promotion.

    A result has one claim: the caller it goes to is the one whose call it is, the others
    shared it. It is the leader's while the leader waits; a leader that left (cancelled,
    past its deadline) passes it to the first caller still waiting, so an upstream answer
    paid for is some caller's own whenever a caller gets it.

    Example:
        >>> flight: SingleFlight[bytes] = SingleFlight()
        >>> body, claimed = await flight.do(key, lambda: fetch(key))
    """

    __slots__ = ("_flights", "_running", "cancel_orphans", "free_if", "promotions", "retry_if")

    def __init__(
        self,
        *,
        cancel_orphans: bool = True,
        retry_if: Callable[[BaseException], bool] | None = None,
        promotions: int = 1,
        free_if: Callable[[BaseException], bool] | None = None,
    ) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        # Every call not yet done, forgotten ones included (a cancelled orphan unwinding).
        self._running: set[asyncio.Future[T]] = set()
        self.cancel_orphans = cancel_orphans
        self.retry_if = retry_if
        self.promotions = promotions
        self.free_if = free_if

    def __len__(self) -> int:
        """Keys in flight."""
        return len(self._flights)

    def flying(self, key: str) -> bool:
        """Whether a call for ``key`` is running (a caller of ``do`` would join it)."""
        return key in self._flights

    async def do(
        self, key: str, call: Callable[[Unpack[Args]], Awaitable[T]], *args: *Args
    ) -> tuple[T, bool]:
        """The result of ``call(*args)`` for ``key``, shared with concurrent callers (the
        arguments are the leader's; passing them, rather than a closure over them, makes
        no closure per call).

        Returns:
            The result, and True for the caller with its claim: the caller whose
            ``call`` ran (the leader) or, when the leader left, the first caller still
            waiting (exactly one caller of a result that reached any).
        """
        promotions = self.promotions if self.retry_if is not None else 0
        while True:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight(self, key, asyncio.ensure_future(call(*args)))
                self._flights[key] = flight
                self._running.add(flight.task)
                flight.task.add_done_callback(flight, context=_LANDING)
            waiter: asyncio.Future[T] = flight.task.get_loop().create_future()
            flight.waiters.append(waiter)
            try:
                result = await waiter
            except asyncio.CancelledError:
                self._left(key, flight, waiter)
                raise
            except Exception as exc:
                if leader or not (self.retry_if and self.retry_if(exc)):
                    raise
                if not (self.free_if and self.free_if(exc)):
                    if promotions <= 0:
                        raise
                    promotions -= 1
                continue
            return result, waiter is flight.claimant

    def join(self, key: str) -> Awaitable[tuple[T, bool]] | None:
        """The result of the call running for ``key``, for a caller that would never start
        one itself (another kind of call for the same key), and whether its claim is this
        caller's (as ``do`` says); None when none runs. Awaited as ``do`` awaits it:
        cancelling it leaves the call to the others, and the last caller's leaving cancels
        it (``cancel_orphans``). No retry: its failure is the caller's."""
        flight = self._flights.get(key)
        if flight is None:
            return None
        waiter: asyncio.Future[T] = flight.task.get_loop().create_future()
        flight.waiters.append(waiter)
        return self._joined(key, flight, waiter)

    async def _joined(
        self, key: str, flight: _Flight[T], waiter: asyncio.Future[T]
    ) -> tuple[T, bool]:
        try:
            result = await waiter
        except asyncio.CancelledError:
            self._left(key, flight, waiter)
            raise
        return result, waiter is flight.claimant

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

    def _left(self, key: str, flight: _Flight[T], waiter: asyncio.Future[T]) -> None:
        """A caller was cancelled: the call is cancelled with its last caller (when
        ``cancel_orphans``), and forgotten first, so a newcomer starts afresh."""
        if waiter.done() and not waiter.cancelled():
            waiter.exception()  # settled as its caller was cancelled: seen, never logged
        if flight.claimant is waiter:
            # Its result came as its caller was cancelled: the claim goes on to the next
            # caller given it, which resumes after this one.
            flight.claimant = _first_given(flight.waiters, after=waiter)
        with contextlib.suppress(ValueError):
            flight.waiters.remove(waiter)
        if not flight.waiters and not flight.task.done():
            self._forget(key, flight)
            if self.cancel_orphans:
                flight.task.cancel()

    def _land(self, key: str, flight: _Flight[T], task: asyncio.Future[T]) -> None:
        """The call ended: forgotten first (a promoted waiter never finds the failed flight
        still registered), then every caller's future settled alike."""
        self._running.discard(task)
        self._forget(key, flight)
        if task.cancelled():
            for waiter in flight.waiters:
                waiter.cancel()
            return
        # Retrieved even when no caller is left (an orphan that failed), so asyncio does
        # not log "exception was never retrieved".
        error = task.exception()
        if error is None:
            result = task.result()
            for waiter in flight.waiters:
                if not waiter.done():
                    waiter.set_result(result)
                    if flight.claimant is None:
                        flight.claimant = waiter
            return
        for waiter in flight.waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


def _first_given(
    waiters: list[asyncio.Future[T]], after: asyncio.Future[T]
) -> asyncio.Future[T] | None:
    """The first of ``waiters`` after ``after`` that was given a result, or None."""
    found = False
    for waiter in waiters:
        if waiter is after:
            found = True
        elif found and waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            return waiter
    return None

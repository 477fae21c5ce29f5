"""The running calls of a Client: each one's deadline, and how ``aclose()`` stops them.

A call past the cache-hit path is counted while it runs, and everything it awaits runs
in an ``asyncio.timeout`` scope: the caller's own deadline (the OpenAI SDK's ``timeout=``)
or none. ``aclose()`` waits for the count to reach zero for a grace period, then expires
the scopes still open, so each call raises ``ClientClosedError`` at the point it was
waiting and unwinds normally (``finally`` blocks release leases, cancel orphaned flights).
The hit path is neither counted nor scoped: it never yields to the event loop, so
``aclose()`` can never find it half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from limpet.errors import APITimeoutError, ClientClosedError

__all__ = ["Call", "RunningCalls"]

T = TypeVar("T")


class Call:
    """One call's own options (the OpenAI SDK's ``timeout=`` and ``extra_headers=``), what
    it is waiting for (for a timeout's message) and how long it queued for admission (the
    transport keeps both up to date: a Call is its ``limpet.http.admission_wait.Waiting``).

    Attributes:
        timeout: seconds the whole call may take, or None.
        headers: sent with the call's upstream request, or None.
        deadline: event-loop time the call must be done by, or None.
        waiting_for: what the call awaits now, in words.
        queued: seconds the call's upstream attempts waited for admission.
        unsent: True while its upstream request's first attempt is queued for admission.
    """

    __slots__ = ("deadline", "headers", "queued", "timeout", "unsent", "waiting_for")

    def __init__(self, timeout: float | None, headers: Mapping[str, str] | None) -> None:
        self.timeout = timeout
        self.headers = headers
        self.begin()

    def begin(self) -> None:
        """Start the call's clock: its deadline runs from now; nothing waited for yet."""
        timeout = self.timeout
        self.deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        self.waiting_for = "the cache"
        self.queued = 0.0
        self.unsent = False


class RunningCalls:
    """Counts running calls and holds the deadline scopes of those awaiting something."""

    __slots__ = ("_active", "_scopes", "_settled", "_stopped", "_tasks")

    def __init__(self) -> None:
        self._active = 0
        self._scopes: set[asyncio.Timeout] = set()
        # The tasks of calls with no deadline: ``stop()`` cancels them itself (an
        # ``asyncio.timeout`` scope with nothing to time would cost every call its entry
        # and exit); and those it cancelled.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped: set[asyncio.Task[Any]] = set()
        # Set whenever a call or a scope ends, while someone waits for that.
        self._settled: asyncio.Event | None = None

    def __len__(self) -> int:
        """Calls running."""
        return self._active

    def counted(self) -> _Counted:
        """Count a call (or an open stream) until it ends: ``with calls.counted(): ...``."""
        return _Counted(self)

    def _ended(self) -> None:
        self._active -= 1
        self._settle()

    def guarded(self, call: Call, work: Awaitable[T], *, count: bool = False) -> Awaitable[T]:
        """``work`` under the call's deadline, in a scope ``stop()`` can expire; with
        ``count``, a whole call counted while it runs (as ``counted()`` counts a stream).
        (A plain function handing over the coroutine that does it: no coroutine of its
        own, one object less alive for every call in flight.)

        Raises:
            APITimeoutError: the call's ``timeout`` passed; says what it was waiting for.
            ClientClosedError: ``stop()`` stopped the call.
        """
        task = asyncio.current_task() if call.deadline is None else None
        if task is not None and task not in self._tasks:
            return self._unscoped(task, work, count)
        return self._scoped(call, work, count)

    async def _scoped(self, call: Call, work: Awaitable[T], count: bool) -> T:
        """``guarded`` for a call with a deadline (or whose task already runs a call)."""
        scope = asyncio.timeout_at(call.deadline)
        self._active += count
        try:
            async with scope:
                self._scopes.add(scope)
                try:
                    return await work
                finally:
                    self._scopes.discard(scope)
                    self._settle()
        except TimeoutError as exc:
            if not scope.expired():
                raise
            if call.deadline is None or asyncio.get_running_loop().time() < call.deadline:
                raise ClientClosedError("Client closed while the call was running") from exc
            raise APITimeoutError(
                f"the call's timeout of {call.timeout:g}s passed while it was waiting for "
                f"{call.waiting_for}"
            ) from exc
        finally:
            if count:
                self._ended()

    async def _unscoped(self, task: asyncio.Task[Any], work: Awaitable[T], count: bool) -> T:
        """``guarded`` for a call with no deadline: ``stop()`` cancels its task, and the
        cancellation leaves as ``ClientClosedError`` (as an expired scope's would)."""
        entered = task.cancelling()
        self._tasks.add(task)
        self._active += count
        try:
            return await work
        except asyncio.CancelledError as exc:
            if task in self._stopped:
                self._stopped.discard(task)
                if task.uncancel() <= entered:
                    raise ClientClosedError("Client closed while the call was running") from exc
            raise
        finally:
            if task in self._stopped:  # stopped, but the work ended some other way
                self._stopped.discard(task)
                task.uncancel()
            self._tasks.discard(task)
            self._settle()
            if count:
                self._ended()

    async def stop(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every call to end, then stop those awaiting
        something (they raise ``ClientClosedError``)."""
        if await self._settled_within(grace, lambda: not self._active):
            return
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):
            if not scope.expired():
                scope.reschedule(now)
        for task in list(self._tasks):
            if task not in self._stopped:
                self._stopped.add(task)
                task.cancel()

    async def unwound(self, seconds: float) -> bool:
        """Whether, within ``seconds``, no call awaits anything any more."""
        return await self._settled_within(seconds, lambda: not self._scopes and not self._tasks)

    async def _settled_within(self, seconds: float, done: Callable[[], bool]) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not done():
                    self._settled = asyncio.Event()
                    await self._settled.wait()
        return done()

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()


class _Counted:
    """``RunningCalls.counted()``: a class rather than a generator, as every call enters it."""

    __slots__ = ("_calls",)

    def __init__(self, calls: RunningCalls) -> None:
        self._calls = calls

    def __enter__(self) -> None:
        self._calls._active += 1

    def __exit__(self, *exc_info: object) -> None:
        self._calls._ended()

"""``CallerWait``: what a caller's task waits on while a ``Command`` runs without a task of
its own (``limpet.cache.memcached.commands``).

To asyncio's tasks it is a future: a task that yields it adds its wake-up as its one
callback, reads ``result()`` when woken, and ``cancel()``s it when the task is
cancelled. Two things differ from ``asyncio.Future``, and are why it exists: cancelling
it ends the wait and nothing else (the command it stands for goes on), and its outcome
can wake the task in the very call that sets it, where a future's callbacks wait for a
loop turn of their own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

__all__ = ["CallerWait"]

T = TypeVar("T")


class CallerWait(Generic[T]):
    """What a caller's task waits on while its ``Command`` runs: a future to asyncio's
    tasks (``_asyncio_future_blocking``, ``add_done_callback``, ``result``, ``cancel``),
    but cancelling it ends the wait alone, and its outcome can wake the task at once
    rather than a loop turn later."""

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_cancelled",
        "_context",
        "_error",
        "_error_traceback",
        "_loop",
        "_result",
        "_state",
    )

    _PENDING, _FINISHED, _CANCELLED = range(3)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # asyncio's tasks wait on what they are yielded with this true (and clear it).
        self._asyncio_future_blocking = True
        self._state = self._PENDING
        self._callback: Callable[[CallerWait[T]], object] | None = None
        self._context: contextvars.Context | None = None
        self._result: T | None = None
        self._error: BaseException | None = None
        self._error_traceback: TracebackType | None = None
        self._cancelled: str | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._state != self._PENDING

    def add_done_callback(
        self, fn: Callable[[CallerWait[T]], object], *, context: contextvars.Context | None = None
    ) -> None:
        if self._state != self._PENDING:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callback, self._context = fn, context

    def result(self) -> T:
        if self._state == self._CANCELLED:
            message = self._cancelled
            raise asyncio.CancelledError() if message is None else asyncio.CancelledError(message)
        if self._state == self._PENDING:
            raise asyncio.InvalidStateError("the command has not ended")
        if self._error is not None:
            # With the traceback it had when told, as a future raises it: one error told to
            # many callers (a closed client's) must not gather every caller's frames.
            raise self._error.with_traceback(self._error_traceback)
        return self._result  # type: ignore[return-value]

    def cancel(self, msg: str | None = None) -> bool:
        """End the wait (the caller's task is cancelled), not the command."""
        if self._state != self._PENDING:
            return False
        self._state, self._cancelled = self._CANCELLED, msg
        self._wake(at_once=False)
        return True

    def finish(self, result: T | None, error: BaseException | None, *, at_once: bool) -> None:
        """The command's outcome; the waiting task wakes in this call when ``at_once``
        (from a loop callback only), else in the next loop turn."""
        if self._state != self._PENDING:
            return
        self._state, self._result, self._error = self._FINISHED, result, error
        self._error_traceback = None if error is None else error.__traceback__
        self._wake(at_once=at_once)

    def _wake(self, *, at_once: bool) -> None:
        fn, context = self._callback, self._context
        if fn is None:
            return
        self._callback = self._context = None
        if not at_once:
            self._loop.call_soon(fn, self, context=context)
        elif context is None:
            fn(self)
        else:
            context.run(fn, self)

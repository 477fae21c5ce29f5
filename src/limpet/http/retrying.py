"""The retry engine of upstream requests: the first attempt runs bare, and tenacity
takes over only once it has failed with something worth retrying.

Building tenacity's ``AsyncRetrying`` and stepping through its iterator costs more than
the rest of a request's client-side work (it checks each callback with
``inspect.iscoroutinefunction`` on every attempt), and nearly every request succeeds
at once. So a request pays for tenacity only when it needs it: the first failure is
handed to a fresh ``AsyncRetrying`` as its attempt 1 (re-raised there, nothing sent
again), which then waits, logs and retries exactly as it would have from the start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from limpet.config import RetryConfig
from limpet.errors import APIError, APIStatusError, APITimeoutError
from limpet.http.admission_slots import REFUSALS
from limpet.http.retry import backoff_delay, should_retry

__all__ = ["QueuedTooLong", "Retrier", "counted", "never_sent"]

logger = logging.getLogger("limpet.transport")

T = TypeVar("T")

#: One attempt: told whether it is a retry, it sends and returns the answer.
AttemptFn = Callable[[bool], Awaitable[T]]


class QueuedTooLong(APITimeoutError):
    """The call could not be admitted before its deadline; final, never retried."""


def never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` ended a call for its caller's own deadline, while it waited to be
    sent (``QueuedTooLong``): nothing upstream failed, so a caller who shared the call
    and set no deadline may try again at no cost."""
    return isinstance(exc, QueuedTooLong)


class Retrier:
    """Runs an attempt, and retries what may pass under tenacity.

    Args:
        config: attempts and backoff.
        shared_pause: True when a refused attempt's ``Retry-After`` is honoured by the
            endpoint's shared admission pause, so the retry itself need not wait.
    """

    __slots__ = ("_config", "_shared_pause")

    def __init__(self, config: RetryConfig, *, shared_pause: bool) -> None:
        self._config = config
        self._shared_pause = shared_pause

    async def run(self, attempt: AttemptFn[T], deadline: float | None) -> tuple[T, int]:
        """``attempt``'s answer and how many attempts it took.

        Args:
            attempt: makes one attempt; its argument is True for a retry.
            deadline: event-loop time past which no retry is started: a backoff that
                would end after it gives up at once with the last error.

        Raises:
            The last attempt's error, when it is final or no retry may follow, its
            ``attempts`` counted (``counted``).
        """
        try:
            return await attempt(False), 1
        except Exception as exc:
            if not self.may_retry(exc):
                counted(exc, 1)
                raise
            failed = exc
        return await self.after(failed, attempt, deadline)

    def may_retry(self, exc: BaseException) -> bool:
        """Whether a first attempt's failure ``exc`` is worth another attempt."""
        return self._config.max_attempts > 1 and retryable(exc)

    async def after(
        self, failed: Exception, attempt: AttemptFn[T], deadline: float | None
    ) -> tuple[T, int]:
        """What ``run`` does once its first attempt failed with ``failed``, which
        ``may_retry``: retries under tenacity. For a caller that made the first attempt
        itself (one coroutine less between the request and whoever awaits it).

        Raises:
            The last attempt's error, when it is final or no retry may follow; the
            last error an attempt met upstream, when a retry could not be admitted
            before ``deadline`` (not ``QueuedTooLong``: something was sent, and what
            it met is what the caller must see, a 429's ``retry_after`` with it). Its
            ``attempts`` counted either way (``counted``).
        """
        retrying = self.retrying(deadline)
        met = failed
        try:
            async for step in retrying:
                with step:
                    if step.retry_state.attempt_number == 1:
                        raise failed  # the attempt already made: tenacity judges it first
                    try:
                        result = await attempt(True)
                    except QueuedTooLong:
                        raise
                    except Exception as exc:
                        met = exc
                        raise
        except QueuedTooLong:
            # The retry never left the line: the attempts made are those before it.
            counted(met, retrying.statistics.get("attempt_number", 2) - 1)
        except Exception as exc:
            counted(exc, retrying.statistics.get("attempt_number", 1))
            raise
        else:
            # reraise=True: reaching here means the last attempt returned.
            attempts: int = retrying.statistics["attempt_number"]
            return result, attempts
        raise met  # outside the handler: its own context kept, not the unsent retry's

    def retrying(self, deadline: float | None = None) -> AsyncRetrying:
        """A fresh tenacity controller with this retrier's stop, wait and logging."""
        stop: stop_base = stop_after_attempt(self._config.max_attempts)
        if deadline is not None:
            stop = stop | _StopBefore(deadline)
        return AsyncRetrying(
            stop=stop,
            wait=self._wait,
            retry=retry_if_exception(retryable),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if self._shared_pause and retry_after is not None and _refusal(exc):
            return 0.0  # the endpoint's shared pause holds the retry, and everyone else
        return backoff_delay(state.attempt_number, self._config, retry_after)


def counted(exc: BaseException, attempts: int) -> None:
    """Record on ``exc``, the error a request's retries end with, how many attempts it
    took (``APIError.attempts``): whoever answers it can tell a failure limpet already
    retried, or chose not to, from one it made a single attempt at."""
    if isinstance(exc, APIError):
        exc.attempts = attempts


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may fix ``exc`` (never a call that was not admitted)."""
    return should_retry(exc) and not isinstance(exc, QueuedTooLong)


def _refusal(exc: BaseException | None) -> bool:
    return isinstance(exc, APIStatusError) and exc.status_code in REFUSALS


class _StopBefore(stop_base):
    """Stop retrying when the next backoff would end past ``deadline`` (loop time)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        now = asyncio.get_running_loop().time()
        return now + retry_state.upcoming_sleep >= self.deadline


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info(
        "limpet: attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, wait
    )

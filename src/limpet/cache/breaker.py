"""A circuit breaker: stop calling a backend that keeps failing, and probe it now and then.

A cache is an optimisation, so when its store is down the right answer is an immediate
miss, not a timeout per call. The breaker turns "every call waits 50 ms and fails" into
"three calls fail, then every call fails at once until a single probe finds the store
back". It is pure bookkeeping (no I/O, no event loop, an injectable clock), so the
caller decides what a call, a success and a failure are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeAlias

from limpet._checks import check_callable
from limpet.errors import ConfigurationError

__all__ = [
    "DEFAULT_BREAKER_COOLDOWN",
    "DEFAULT_FAILURE_THRESHOLD",
    "BreakerState",
    "CircuitBreaker",
]

DEFAULT_FAILURE_THRESHOLD = 3
#: Seconds an open breaker refuses calls before it lets a probe through.
DEFAULT_BREAKER_COOLDOWN = 2.0

BreakerState: TypeAlias = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed, open, half-open: the classic three-state breaker.

    - **closed**: every call is allowed; ``failure_threshold`` consecutive failures open it.
    - **open**: no call is allowed for ``cooldown`` seconds.
    - **half_open**: the cool-down has passed; one probe at a time is allowed. Its success
      closes the breaker, its failure opens it again for another ``cooldown``.

    Every call that ``allow()`` admits must end in exactly one of ``record_success()``,
    ``record_failure()`` or ``release()`` (the call was abandoned, e.g. cancelled, and says
    nothing about the backend), or a half-open breaker waits for its probe forever.

    Calls overlap, so a verdict can arrive after the breaker has moved on: a call admitted
    before it opened may time out while the probe is out. Read ``epoch`` right after
    ``allow()`` and pass it with the verdict, and verdicts from an earlier epoch (a state
    the breaker has since left) are ignored. Without it, a verdict is taken as one on the
    current state, and verdicts arriving while open are ignored.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        cooldown: seconds an open breaker refuses calls before it lets a probe through.
        clock: monotonic seconds; inject a fake one in tests.

    Example:
        >>> breaker = CircuitBreaker(failure_threshold=3, cooldown=2.0)
        >>> if not breaker.allow():
        ...     raise CacheUnavailableError("circuit open")
        >>> epoch = breaker.epoch
        >>> try:
        ...     value = await redis.get(key)
        ... except RedisError:
        ...     breaker.record_failure(epoch)
        ...     raise
        ... else:
        ...     breaker.record_success(epoch)
    """

    __slots__ = (
        "_clock",
        "_epoch",
        "_failures",
        "_open",
        "_opened_at",
        "_probing",
        "cooldown",
        "failure_threshold",
        "opens",
        "rejected",
    )

    def __init__(
        self,
        *,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cooldown: float = DEFAULT_BREAKER_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ConfigurationError(
                f"CircuitBreaker.failure_threshold: expected an int >= 1, got {failure_threshold!r}"
            )
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown < 0:
            raise ConfigurationError(
                f"CircuitBreaker.cooldown: expected seconds >= 0, got {cooldown!r}"
            )
        check_callable("CircuitBreaker.clock", clock, "a callable returning monotonic seconds")
        self.failure_threshold = failure_threshold
        self.cooldown = float(cooldown)
        #: Times the breaker went from closed to open: one per outage, not per failed probe.
        self.opens = 0
        #: Calls refused because the breaker was open or a probe was already out.
        self.rejected = 0
        self._clock = clock
        self._epoch = 0
        self._failures = 0
        # "open" and "half_open" share this flag; which one it is depends on the clock,
        # so the breaker needs no timer to move from one to the other.
        self._open = False
        self._opened_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failure_threshold={self.failure_threshold}, "
            f"cooldown={self.cooldown}, opens={self.opens})"
        )

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` (cooling down) or ``"half_open"`` (ready to probe)."""
        if not self._open:
            return "closed"
        if self._clock() - self._opened_at < self.cooldown:
            return "open"
        return "half_open"

    @property
    def cooling_for(self) -> float:
        """Seconds left before an open breaker lets a probe through (0 when it would now)."""
        if not self._open:
            return 0.0
        return max(self.cooldown - (self._clock() - self._opened_at), 0.0)

    @property
    def failing(self) -> bool:
        """True after a failure not yet followed by a success: a streak under way, or the
        breaker open or probing."""
        return self._open or self._failures > 0

    @property
    def epoch(self) -> int:
        """A number that changes each time the breaker opens or closes."""
        return self._epoch

    def allow(self) -> bool:
        """Whether a call may go ahead now; a True in half-open makes the caller the probe."""
        if not self._open:
            return True  # closed
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        self.rejected += 1
        return False

    def record_success(self, epoch: int | None = None) -> None:
        """An admitted call succeeded: reset the failure count, or close after a probe.

        Args:
            epoch: ``epoch`` when the call was admitted; a stale verdict is ignored.
        """
        if epoch is not None and epoch != self._epoch:
            return
        if not self._open:
            self._failures = 0
        elif self.state == "half_open":
            self._open = False
            self._probing = False
            self._failures = 0
            self._epoch += 1

    def record_failure(self, epoch: int | None = None) -> None:
        """An admitted call failed: count it, or re-open after a failed probe.

        Args:
            epoch: ``epoch`` when the call was admitted; a stale verdict is ignored.
        """
        if epoch is not None and epoch != self._epoch:
            return
        state = self.state
        if state == "closed":
            self._failures += 1
            if self._failures >= self.failure_threshold:
                self.opens += 1
                self._trip()
        elif state == "half_open":
            self._trip()

    def release(self, epoch: int | None = None) -> None:
        """An admitted call ended without a verdict; let another probe go if it was one.

        Args:
            epoch: ``epoch`` when the call was admitted; a stale release is ignored.
        """
        if epoch is not None and epoch != self._epoch:
            return
        if self.state == "half_open":
            self._probing = False

    def _trip(self) -> None:
        self._epoch += 1
        self._open = True
        self._opened_at = self._clock()
        self._probing = False
        self._failures = 0

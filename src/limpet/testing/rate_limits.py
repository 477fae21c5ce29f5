"""``RateLimits``: when one fake endpoint answers 429, and the quota headers it sends."""

from __future__ import annotations

import math
from collections import deque


class RateLimits:
    """The rate limits of one ``FakeEndpoint``, which owns it and passes it the time.

    A request is refused by the first of three limits that holds it back:

    - closed (``close_for()``): every request, until a time on the gateway's clock;
    - in flight (``limit(in_flight=...)``): one arriving while that many are being
      answered; it is told to retry after ``limit(retry_after=...)``, by default the
      endpoint's latency (a slot frees within one answer);
    - window (``limit(requests=..., per=...)``): one arriving while ``requests`` have been
      let through in the last ``per`` seconds, a sliding window; it is told to retry
      when the oldest of them leaves the window.

    A refusal is counted in ``refused`` and carries ``Retry-After`` (whole seconds,
    rounded up), ``retry-after-ms`` and OpenAI's ``x-ratelimit-limit-requests``,
    ``x-ratelimit-remaining-requests`` (0) and ``x-ratelimit-reset-requests``. Under a
    window, an answer carries the same ``x-ratelimit-*-requests`` headers with the quota
    left (``quota_headers()``). Nothing here waits or reads a clock: ``now`` is given.

    Example:
        >>> limits = RateLimits()
        >>> limits.limit(requests=1, per=10.0)
        >>> limits.refusal(0.0, in_flight=0, latency=0.0) is None
        True
        >>> limits.refusal(4.0, in_flight=0, latency=0.0)["Retry-After"]
        '6'
        >>> limits.quota_headers(10.0)["x-ratelimit-remaining-requests"]
        '1'
        >>> limits.refused
        1

    Attributes:
        refused: 429s answered since creation or the last ``reset()``.
    """

    __slots__ = (
        "_closed_until",
        "_in_flight_limit",
        "_limit_retry_after",
        "_rate_window",
        "_rpm_limit",
        "_window",
        "refused",
    )

    def __init__(self) -> None:
        self._in_flight_limit: int | None = None
        self._rpm_limit: int | None = None
        self._rate_window = 60.0
        self._limit_retry_after: float | None = None
        self._window: deque[float] = deque()
        self._closed_until = -math.inf
        self.refused = 0

    def __repr__(self) -> str:
        return (
            f"RateLimits(in_flight={self._in_flight_limit}, requests={self._rpm_limit}, "
            f"per={self._rate_window}, refused={self.refused})"
        )

    def limit(
        self,
        *,
        in_flight: int | None = None,
        requests: int | None = None,
        per: float = 60.0,
        retry_after: float | None = None,
    ) -> None:
        """Set the in-flight and window limits (None: no such limit); see
        ``FakeEndpoint.limit``. The window starts empty.

        Raises:
            ValueError: ``in_flight`` or ``requests`` < 1, or ``per`` not > 0.
        """
        for name, value in (("in_flight", in_flight), ("requests", requests)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if not per > 0:
            raise ValueError(f"per must be > 0, got {per}")
        self._in_flight_limit = in_flight
        self._rpm_limit = requests
        self._rate_window = per
        self._limit_retry_after = retry_after
        self._window.clear()

    def close_for(self, seconds: float, now: float) -> None:
        """Refuse every request until ``seconds`` after ``now`` (gateway clock)."""
        self._closed_until = now + seconds

    def refusal(self, now: float, *, in_flight: int, latency: float) -> dict[str, str] | None:
        """The headers of a 429 for a request arriving at ``now`` (gateway clock) while
        ``in_flight`` are being answered in ``latency`` seconds each, or None when the
        limits let it through (it is then counted in the window)."""
        wait: float | None = None
        limit = self._rpm_limit
        if self._closed_until > now:
            wait = self._closed_until - now
        elif self._in_flight_limit is not None and in_flight >= self._in_flight_limit:
            limit = self._in_flight_limit
            wait = latency if self._limit_retry_after is None else self._limit_retry_after
        elif self._rpm_limit is not None:
            window = self._pruned(now)
            if len(window) >= self._rpm_limit:
                wait = window[0] + self._rate_window - now
        if wait is None:
            if self._rpm_limit is not None:
                self._window.append(now)
            return None
        self.refused += 1
        return {
            "Retry-After": str(math.ceil(wait)),
            "retry-after-ms": str(round(wait * 1000)),
            "x-ratelimit-limit-requests": str(limit or 0),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{wait:.3f}s",
        }

    def quota_headers(self, now: float) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*-requests`` headers of an answer sent at ``now``, under
        a ``limit(requests=...)`` window; empty without one."""
        if self._rpm_limit is None:
            return {}
        window = self._pruned(now)
        remaining = max(self._rpm_limit - len(window), 0)
        reset = window[0] + self._rate_window - now if window else 0.0
        return {
            "x-ratelimit-limit-requests": str(self._rpm_limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{max(reset, 0.0):.3f}s",
        }

    def reset(self) -> None:
        """Zero ``refused``, empty the window and lift a ``close_for()``; the limits stay."""
        self.refused = 0
        self._window.clear()
        self._closed_until = -math.inf

    def _pruned(self, now: float) -> deque[float]:
        """The window of accepted requests, those older than ``per`` seconds dropped."""
        window = self._window
        while window and window[0] <= now - self._rate_window:
            window.popleft()
        return window

"""Retry decisions, pure: which failures to retry and how long to wait before the next try."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Mapping

from limpet.config import RetryConfig
from limpet.errors import APIConnectionError, APIGenerationError, APIStatusError

__all__ = ["RETRYABLE_STATUSES", "backoff_delay", "parse_retry_after", "should_retry"]

#: 408 timeout, 409 lock conflict, 429 rate limit; every 5xx is retryable as well.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


def should_retry(exc: BaseException) -> bool:
    """True for failures another attempt may fix: connection errors, timeouts,
    408, 409, 429 and 5xx, and generations that failed part-way with one of those codes
    or none (a provider that broke mid-answer). Other 4xx and malformed 200s are final.

    Whether a stream that already sent chunks may be retried is its caller's decision."""
    if isinstance(exc, APIStatusError | APIGenerationError):
        code = exc.status_code
        return code is None or code in RETRYABLE_STATUSES or code >= 500
    return isinstance(exc, APIConnectionError)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After``
    (delta-seconds or an HTTP date). None when absent or unreadable."""
    lowered = {name.lower(): value for name, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        seconds = _finite(millis)
        if seconds is not None:
            return max(seconds / 1000.0, 0.0)
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def backoff_delay(
    attempt: int,
    config: RetryConfig,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The server's ``retry_after`` wins, capped at ``config.max_retry_after``; otherwise
    exponential backoff with full jitter in its upper half, capped at ``config.max_backoff``.
    """
    if retry_after is not None:
        return min(retry_after, config.max_retry_after)
    ceiling = min(config.initial_backoff * 2.0 ** (attempt - 1), config.max_backoff)
    jitter = (rng or random).uniform(0.5, 1.0)
    return ceiling * jitter


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None

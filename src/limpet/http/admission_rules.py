"""Admission decisions, pure: the learned concurrency limit, token buckets, what an
answer's rate-limit headers say about when to send again, and a request's token estimate.

Nothing here awaits or reads a clock; ``limpet.http.admission`` feeds them the loop's time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from limpet.config import AdmissionConfig
from limpet.http.retry import parse_retry_after
from limpet.providers.usage import MAX_TOKENS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Every header name that ``pause_from_headers`` and ``remaining_requests`` read starts so.
_RATE_LIMIT_PREFIXES = ("retry-after", "x-ratelimit-")
_RATE_LIMIT_INITIALS = frozenset("rRxX")
#: Seconds added to a stated ``x-ratelimit-reset-*``: a gateway rounds the time it states
#: (to the millisecond, or coarser), so a request sent the instant a rounded reset passes
#: can reach the gateway before its window has reset, and meet the 429 the wait was for.
RESET_SLACK = 0.005


def parse_duration(text: str) -> float | None:
    """Seconds of an ``x-ratelimit-reset-*`` value: OpenAI's ``"6m0s"``, ``"1.5s"``,
    ``"20ms"``, or a bare number of seconds. None when unreadable."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    if not text or _DURATION_PART.sub("", text):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def pause_from_headers(status: int, headers: Mapping[str, str]) -> float | None:
    """Seconds every caller of the endpoint should hold off, from one answer's headers.

    A 429 or 503 pauses for its ``Retry-After`` (``retry-after-ms``); any answer whose
    ``x-ratelimit-remaining-requests`` or ``-tokens`` is 0 pauses until the matching
    ``x-ratelimit-reset-*`` (``RESET_SLACK`` past it), so the next request does not meet a
    closed door. None: no pause.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    pauses: list[float] = []
    if status in (429, 503):
        retry_after = parse_retry_after(lowered)
        if retry_after is not None:
            pauses.append(retry_after)
    for kind in ("requests", "tokens"):
        remaining = lowered.get(f"x-ratelimit-remaining-{kind}")
        reset = lowered.get(f"x-ratelimit-reset-{kind}")
        if remaining is None or reset is None or remaining.strip() not in ("0", "0.0"):
            continue
        seconds = parse_duration(reset)
        if seconds is not None:
            pauses.append(seconds + RESET_SLACK)
    return max(pauses) if pauses else None


def rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an answer that may say something about rate limits (``Retry-After``,
    ``retry-after-ms``, ``x-ratelimit-*``), names lowered; ``{}`` for most answers.

    Example:
        >>> rate_limit_headers({"Content-Type": "application/json", "Retry-After": "2"})
        {'retry-after': '2'}
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        # Most names fail on their first letter: lowered only when it is r or x.
        if name[:1] in _RATE_LIMIT_INITIALS:
            lowered = name.lower()
            if lowered.startswith(_RATE_LIMIT_PREFIXES):
                found[lowered] = value
    return found


def remaining_requests(headers: Mapping[str, str]) -> tuple[int, float] | None:
    """What an answer's ``x-ratelimit-remaining-requests`` and ``-reset-requests`` say:
    requests that may still be sent, and for how many seconds that holds (``RESET_SLACK``
    past the stated reset). None when either is absent or unreadable."""
    lowered = {name.lower(): value for name, value in headers.items()}
    remaining = lowered.get("x-ratelimit-remaining-requests")
    reset = lowered.get("x-ratelimit-reset-requests")
    if remaining is None or reset is None:
        return None
    seconds = parse_duration(reset)
    try:
        count = int(float(remaining))
    except (ValueError, OverflowError):  # "nan", "inf"
        return None
    return None if seconds is None else (max(count, 0), seconds + RESET_SLACK)


@dataclass(slots=True)
class AimdLimit:
    """A concurrency limit learned by additive increase, multiplicative decrease.

    It starts at ``config.initial_limit`` and, until the first refusal, grows by one per
    success (doubling each round trip, as TCP's slow start). A refusal (429, 503) cuts it
    to ``config.backoff`` times the concurrency the refused request met, and remembers that
    concurrency as the ceiling. Below the ceiling it grows by about one per round trip;
    at it, ``config.probe_rounds`` times slower, so the endpoint is probed now and then
    (its quota may have grown) rather than refused every few round trips. Successes
    while less than half the limit is in use do not grow it (nothing was learned); a
    refusal then cuts the limit by ``config.backoff`` from its own value and teaches no
    ceiling (it tells of a passing overload or a per-minute quota, not of the
    concurrency the endpoint takes: one 503 met by a lone request had cut the limit to
    1, sending the bursts after it one request at a time).

    A ceiling is evidence that ages. Once the limit lets the ceiling's concurrency in
    flight, only successes met at that concurrency grow it, still at the probe rate;
    when they have carried it one past the ceiling (``config.probe_rounds`` round trips
    at the refused concurrency without a refusal) the ceiling is forgotten and growth
    goes back to one per round trip. A ceiling learned in a brief drop of the endpoint's
    limit had held growth at the probe rate for good: from 2 back to 40 took 25 to 60
    minutes at LLM round trips. A fresh refusal at the ceiling teaches it anew, so an
    endpoint whose limit holds is still probed only every ``config.probe_rounds`` round
    trips.

    Attributes:
        value: the current limit; requests in flight are kept at or below its floor.
        ceiling: the concurrency of the last refusal, or None before any and once the
            limit has outgrown it.
        slow_start: growing by one per success (doubling each round trip): True until
            a refusal teaches a ceiling, and never again after.
    """

    config: AdmissionConfig
    value: float = 0.0
    ceiling: int | None = None
    slow_start: bool = True

    def __post_init__(self) -> None:
        if not self.value:
            self.value = float(self.config.initial_limit)
        if self.ceiling is not None:
            self.slow_start = False

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        return max(self.config.min_limit, math.floor(self.value))

    def succeeded(self, in_flight: int) -> None:
        """A request answered while ``in_flight`` were in flight (itself included)."""
        if in_flight * 2 < self.value:
            return
        if self.ceiling is not None and self.value >= self.ceiling:
            if in_flight < self.ceiling:
                return  # the refused concurrency was not met: the ceiling is untested
            if self.value >= self.ceiling + 1:
                self.ceiling = None  # served probe_rounds round trips there: stale
        if self.ceiling is None:
            step = 1.0 if self.slow_start else 1.0 / self.value
        elif self.value + 1 < self.ceiling:
            step = 1.0 / self.value
        else:
            step = 1.0 / (self.value * self.config.probe_rounds)
        self.value = min(self.value + step, float(self.config.max_limit))

    def refused(self, in_flight: int) -> None:
        """A request was refused (429, 503) when ``in_flight`` were in flight."""
        if in_flight * 2 < self.value:
            self.value = max(self.value * self.config.backoff, float(self.config.min_limit))
            return
        self.ceiling = max(in_flight, self.config.min_limit)
        self.slow_start = False
        cut = min(self.value, float(in_flight)) * self.config.backoff
        self.value = max(cut, float(self.config.min_limit))


@dataclass(slots=True)
class TokenBucket:
    """A budget of ``capacity`` per minute, refilled continuously (``rpm=``, ``tpm=``).

    A cost above what is left waits; a cost above ``capacity`` goes through when the
    bucket is full, leaving it in debt, so no request waits forever.
    """

    capacity: float
    level: float = math.nan
    updated: float = 0.0

    def __post_init__(self) -> None:
        if math.isnan(self.level):
            self.level = self.capacity

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken; 0.0 when it can be now."""
        self._refill(now)
        missing = min(cost, self.capacity) - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost

    def give_back(self, amount: float, now: float) -> None:
        """Correct an estimate: ``amount`` > 0 was over-charged, < 0 under-charged."""
        self._refill(now)
        self.level = min(self.level + amount, self.capacity)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            rate = self.capacity / 60.0
            self.level = min(self.capacity, self.level + (now - self.updated) * rate)
            self.updated = now


def estimated_tokens(payload: bytes) -> float:
    """Tokens a request may use, before it is sent (for ``Endpoint.tpm``): about four
    bytes of JSON per prompt token, and the completion's cap when it has one."""
    cap = 0
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                cap = value
                break
    return len(payload) / 4 + cap


def total_tokens(data: Mapping[str, Any]) -> int | None:
    """The tokens an answer says it used (``usage.total_tokens``), or None (also for a
    count no call could have: subtracted from a float estimate, an int wider than a
    float raised OverflowError and failed the paid call)."""
    usage = data.get("usage")
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    if type(total) is not int or not 0 <= total <= MAX_TOKENS:
        return None
    return total

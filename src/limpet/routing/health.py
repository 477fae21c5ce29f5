"""Passive endpoint health: eject an endpoint after consecutive failures, probe it back. Pure.

No health checks are sent: the calls themselves are the signal. An endpoint is

- ``healthy``: routed to; each failure adds one to a count that any success resets;
- ``ejected``: after ``failure_threshold`` consecutive failures, for a cool-down (or the
  server's ``Retry-After``, when longer, up to the maximum cool-down); its keys go to the
  next endpoint of their own ranking, the same one in every process;
- ``half_open``: after the cool-down, one call at a time is let through as a probe: a
  success makes it healthy (its keys come back), a failure ejects it again for twice the
  cool-down, up to a maximum.

A call that began before the endpoint's latest ejection and succeeds after it never
brings it back: it was accepted before the endpoint broke.

A single error never ejects, so it never moves a key. Nor does a refusal of a credential
that is the caller's own rather than the endpoint's (a proxy forwarding each caller's
key): one caller's bad key or spent quota says nothing about the endpoint the others use.
Nor does a call that was never sent (its deadline passed while it waited out a rate-limit
pause): the endpoint never saw it.
"""

from __future__ import annotations

from typing import Literal, TypeGuard

from limpet.errors import APIConnectionError, APIError, APIResponseError, APIStatusError
from limpet.http.retrying import never_sent

__all__ = [
    "EndpointHealth",
    "HealthState",
    "counts_against_endpoint",
    "is_endpoint_fault",
    "retry_after_of",
]

HealthState = Literal["healthy", "ejected", "half_open"]

#: Statuses that say the endpoint (its key, credits or provider) is at fault, not the
#: request: rate limits, timeouts, auth and billing trouble, and every 5xx.
_ENDPOINT_STATUSES = frozenset({401, 402, 403, 408, 409, 429})
#: Of those, the refusals of the credential a call was sent with: its key, its credits,
#: its permissions, its rate limit.
_CREDENTIAL_STATUSES = frozenset({401, 402, 403, 429})


def is_endpoint_fault(exc: BaseException, *, callers_credentials: bool = False) -> bool:
    """True for failures that count against an endpoint's health.

    Connection errors, timeouts, 429, 5xx and the like do; a bad request (400, 404, 422)
    says nothing about the endpoint, nor does a cancelled call. With
    ``callers_credentials`` (the call was sent with its caller's own credentials, not the
    endpoint's), neither does a refusal of those (401, 402, 403, 429): it is the caller's.

    Example:
        >>> from limpet.errors import AuthenticationError
        >>> refused = AuthenticationError("User not found.", status_code=401)
        >>> is_endpoint_fault(refused), is_endpoint_fault(refused, callers_credentials=True)
        (True, False)
    """
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        if callers_credentials and status in _CREDENTIAL_STATUSES:
            return False
        return status in _ENDPOINT_STATUSES or status >= 500
    return isinstance(exc, APIConnectionError | APIResponseError)


def counts_against_endpoint(
    error: BaseException, *, rate_limits_paused: bool, callers_credentials: bool = False
) -> TypeGuard[APIError]:
    """Whether the error that ended one call to an endpoint counts against its health.

    It does when ``is_endpoint_fault`` says so, except for a call never sent
    (``limpet.http.retrying.never_sent``: it timed out queued behind the endpoint's
    rate-limit pause, so the endpoint never saw it), and, when ``rate_limits_paused``
    (an admission pause honours rate limits), for a 429: the pause is the answer to it.

    Example:
        >>> from limpet.errors import RateLimitError
        >>> from limpet.http.retrying import QueuedTooLong
        >>> limited = RateLimitError("slow down", status_code=429, body="")
        >>> counts_against_endpoint(limited, rate_limits_paused=False)
        True
        >>> counts_against_endpoint(limited, rate_limits_paused=True)
        False
        >>> counts_against_endpoint(QueuedTooLong("queued"), rate_limits_paused=False)
        False
    """
    if not isinstance(error, APIError) or never_sent(error):
        return False
    if rate_limits_paused and getattr(error, "status_code", 0) == 429:
        return False
    return is_endpoint_fault(error, callers_credentials=callers_credentials)


class EndpointHealth:
    """The health of one endpoint, driven by call outcomes and a clock the caller passes.

    Example:
        >>> health = EndpointHealth(failure_threshold=2, cooldown=30.0, max_cooldown=300.0)
        >>> health.failed(now=0.0), health.failed(now=1.0)
        (False, True)
        >>> health.state(now=2.0), health.state(now=31.0)
        ('ejected', 'half_open')
    """

    __slots__ = (
        "_base_cooldown",
        "_max_cooldown",
        "cooldown",
        "ejected_until",
        "ejections",
        "failure_threshold",
        "failures",
        "probing",
    )

    def __init__(self, *, failure_threshold: int, cooldown: float, max_cooldown: float) -> None:
        self.failure_threshold = failure_threshold
        self._base_cooldown = cooldown
        self._max_cooldown = max_cooldown
        self.cooldown = cooldown
        self.failures = 0
        # 0.0 while healthy; else when the cool-down ends (half-open from then on).
        self.ejected_until = 0.0
        self.probing = False
        self.ejections = 0

    def __repr__(self) -> str:
        return (
            f"EndpointHealth(failures={self.failures}, ejected_until={self.ejected_until:g}, "
            f"probing={self.probing})"
        )

    def state(self, now: float) -> HealthState:
        if not self.ejected_until:
            return "healthy"
        return "ejected" if now < self.ejected_until else "half_open"

    def available(self, now: float) -> bool:
        """True when a call may be routed here now: healthy, or half-open with no probe
        in flight."""
        if not self.ejected_until:
            return True
        return now >= self.ejected_until and not self.probing

    def begin(self, now: float) -> bool:
        """A call starts; returns True when it is the half-open probe."""
        if self.ejected_until and now >= self.ejected_until and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self, started: int | None = None) -> bool:
        """A call succeeded; returns True when that brought the endpoint back.

        ``started`` is ``ejections`` when the call began (None: now). A call begun before
        the latest ejection says nothing of the endpoint since (it was accepted before
        the endpoint broke) and changes nothing: only the half-open probe, or a call
        begun since, brings an ejected endpoint back.
        """
        if started is not None and started != self.ejections:
            return False
        recovered = bool(self.ejected_until)
        self.failures = 0
        self.ejected_until = 0.0
        self.probing = False
        self.cooldown = self._base_cooldown
        return recovered

    def failed(self, now: float, retry_after: float | None = None, *, probe: bool = False) -> bool:
        """A call failed at the endpoint's fault; returns True when that ejected it.
        ``probe``: the call was the half-open probe (``begin`` said so); another call's
        failure meanwhile neither doubles the cool-down nor ends the probe."""
        self.failures += 1
        if probe:
            self.probing = False
            self.cooldown = min(self.cooldown * 2, self._max_cooldown)
        elif self.ejected_until or self.failures < self.failure_threshold:
            # Already ejected (a last-resort call failed too), or not yet enough failures.
            return False
        # A server's Retry-After may stretch the cool-down up to max_cooldown, never past
        # it: that bounds every ejection (a failed probe's doubling too), and a date in
        # year 9999 would otherwise take the endpoint away for the life of the process.
        wait = min(retry_after or 0.0, self._max_cooldown)
        self.ejected_until = now + max(self.cooldown, wait)
        self.ejections += 1
        return True

    def released(self, *, probe: bool = False) -> None:
        """A call ended without a verdict (cancelled, or the request's own fault); the
        probe's (``probe``) lets another call probe."""
        if probe:
            self.probing = False


def retry_after_of(exc: APIError) -> float | None:
    """The wait an error asked for, if any."""
    return exc.retry_after if isinstance(exc, APIStatusError) else None

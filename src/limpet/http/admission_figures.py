"""What an endpoint's admission reports (``AdmissionStats``), and the running totals of
the admissions of the calls that bring their own keys to it (``AdmissionTotals``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["AdmissionStats", "AdmissionTotals"]


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """One endpoint's admission, now.

    Attributes:
        limit: requests that may be in flight now (the cap or the learned limit).
        cap: ``Endpoint.max_in_flight``, or None.
        learned: the learned limit, unrounded.
        in_flight: requests on the wire.
        queued: callers waiting for a slot.
        rate_limited: 429 answers received.
        paused_seconds: seconds the endpoint was paused in all.
        paused_for: seconds left of the current pause (0.0 when not paused).
    """

    limit: int
    cap: int | None
    learned: float
    in_flight: int
    queued: int
    rate_limited: int
    paused_seconds: float
    paused_for: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def plus(self, callers: AdmissionTotals) -> AdmissionStats:
        """These figures with what the admissions of calls that bring credentials of
        their own hold added: requests in flight, callers queued, 429s, seconds paused.
        The limit, cap, learned limit and pause left stay the endpoint's own."""
        return AdmissionStats(
            limit=self.limit,
            cap=self.cap,
            learned=self.learned,
            in_flight=self.in_flight + callers.in_flight,
            queued=self.queued + callers.queued,
            rate_limited=self.rate_limited + callers.rate_limited,
            paused_seconds=self.paused_seconds + callers.paused_seconds,
            paused_for=self.paused_for,
        )


class AdmissionTotals:
    """What the admissions of the calls that bring their own credentials to one endpoint
    hold together, kept as it changes: the endpoint's figures add it without visiting each
    (a proxy may serve thousands of keys, and every call's event carries the figures)."""

    __slots__ = ("in_flight", "paused_seconds", "queued", "rate_limited")

    def __init__(self) -> None:
        self.in_flight = 0
        self.queued = 0
        self.rate_limited = 0
        self.paused_seconds = 0.0

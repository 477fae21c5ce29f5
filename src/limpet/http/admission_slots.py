"""One upstream attempt's admission: its ``Slot`` on the wire, which notes what the answer
said and is given back with its verdict (``limpet.http.admission.Admission`` hands the
slots out); with admission off, every attempt holds ``UNADMITTED``, which notes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from limpet.errors import APIResponseError, APIStatusError

if TYPE_CHECKING:
    from limpet.http.admission import Admission

#: Answers that say "not now" rather than "no": they steer admission, never repin.
REFUSALS = frozenset({429, 503})

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Ticket(Protocol):
    """One attempt's admission, as the transport holds it: told the answer's status and
    headers (``saw``), then closed with the attempt's verdict."""

    def saw(self, status: int, headers: Mapping[str, str]) -> None:
        """Note an answer's status and headers (a ``Seen``)."""
        ...

    def close(self, error: BaseException | None, used_tokens: int | None = None) -> None:
        """The attempt ended, with ``error`` or not (and, answered, the tokens it used)."""
        ...


class Slot:
    """One attempt's place on the wire (a ``Ticket``): give it back with exactly one of
    ``close``, ``succeeded``, ``refused`` or ``release`` (the later calls do nothing)."""

    __slots__ = ("_admission", "_epoch", "_in_flight", "_released", "_tokens", "headers", "status")

    def __init__(self, admission: Admission, in_flight: int, epoch: int, tokens: float) -> None:
        self._admission = admission
        self._in_flight = in_flight
        self._epoch = epoch
        self._tokens = tokens
        self._released = False
        self.status: int | None = None
        self.headers = _NO_HEADERS

    def saw(self, status: int, headers: Mapping[str, str]) -> None:
        """Note an answer's status and headers (a ``Seen``), for ``close``."""
        self.status, self.headers = status, headers

    def close(self, error: BaseException | None, used_tokens: int | None = None) -> None:
        """Give the slot back with the verdict of the answer seen, or of ``error``."""
        if self.status in REFUSALS:
            self.refused(self.status, self.headers)
        elif error is None or isinstance(error, APIStatusError | APIResponseError):
            self.succeeded(self.headers, used_tokens)  # it answered: not overloaded
        else:
            self.release()

    def succeeded(self, headers: Mapping[str, str], used_tokens: int | None = None) -> None:
        """The attempt was answered: the limit may grow; headers may pause the endpoint."""
        if self._released:
            return
        admission = self._admission
        try:
            admission.limit.succeeded(self._in_flight)
            admission.probing = False
            admission.steer(200, headers)
            if used_tokens is not None:
                admission.correct_tokens(self._tokens - used_tokens)
        finally:
            self.release()

    def refused(self, status: int, headers: Mapping[str, str]) -> None:
        """The attempt met a 429 or 503: the limit shrinks (once per round of requests
        sent before the refusal), and a ``Retry-After`` pauses the endpoint."""
        if self._released:
            return
        admission = self._admission
        try:
            if status == 429:
                admission.count_rate_limited()
            if self._epoch == admission.epoch:
                admission.limit.refused(self._in_flight)
                admission.epoch += 1
            admission.steer(status, headers)
        finally:
            self.release()

    def release(self) -> None:
        """Give the place back without a verdict (a connection error, a cancellation)."""
        if not self._released:
            self._released = True
            self._admission.released()


Seen = Callable[[int, Mapping[str, str]], None]
"""Told each answer's status and headers (``Ticket.saw``)."""


class _Unadmitted:
    """The ticket of every attempt while admission is off: nothing to note or give back."""

    __slots__ = ()

    def saw(self, status: int, headers: Mapping[str, str]) -> None:
        pass

    def close(self, error: BaseException | None, used_tokens: int | None = None) -> None:
        pass


#: The one ticket of attempts made with admission off.
UNADMITTED: Ticket = _Unadmitted()

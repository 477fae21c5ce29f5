"""Upstream admission: per endpoint, a cap on requests in flight, a learned limit, budgets
per minute and one shared pause, with callers beyond them waiting first come first served.

Every upstream attempt takes a ``Slot`` of its endpoint's ``Admission`` before it is sent
and gives it back when its answer is in; how the answer went (``Slot.succeeded``,
``Slot.refused``, in ``limpet.http.admission_slots``) steers the limit and the pause.
The decisions themselves are pure, in ``limpet.http.admission_rules``.

Why not ``anyio.CapacityLimiter``: it has a settable size, but a borrower is a task and
must release from that same task, while a stream's slot is given back wherever its
generator is closed; and the pause and the per-minute budgets must hold the same FIFO
line, which one small asyncio primitive does in a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Mapping

from limpet.config import AdmissionConfig, Endpoint
from limpet.http.admission_figures import AdmissionStats, AdmissionTotals
from limpet.http.admission_rules import (
    AimdLimit,
    TokenBucket,
    pause_from_headers,
    rate_limit_headers,
    remaining_requests,
)
from limpet.http.admission_slots import Slot
from limpet.http.admission_wire import Wire, wire_limit

__all__ = [
    "MAX_CALLERS_ADMISSIONS",
    "Admission",
    "AdmissionStats",
    "AdmissionTotals",
    "Admissions",
    "Wire",
]

#: Admissions of callers' own credentials kept at most (idle ones are forgotten beyond).
MAX_CALLERS_ADMISSIONS = 1024


class Admission:
    """The admission of one endpoint: its limit, pause, budgets and FIFO line.

    Args:
        endpoint: the endpoint (its ``max_in_flight``, ``rpm``, ``tpm``).
        config: how the limit is learned.
        max_pause: the longest pause an answer may ask for.
        pool: the connections the HTTP session may hold (``Timeouts.max_connections``;
            0: unbounded). No more requests than that are let on the wire: one more would
            only wait inside aiohttp for a connection, out of this FIFO line, holding the
            request it built meanwhile (at concurrency 500 most of a Client's calls did),
            and would count as in flight for the learned limit while it waited.
        totals: where a caller's own admission adds what it holds (``AdmissionTotals``);
            None for an endpoint's own.
        wire: the endpoint's places on the wire, shared with the other admissions of the
            same endpoint (one of its own by default: ``max_in_flight`` and ``pool``).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        config: AdmissionConfig,
        *,
        max_pause: float = math.inf,
        pool: int = 0,
        totals: AdmissionTotals | None = None,
        wire: Wire | None = None,
    ) -> None:
        self.name = endpoint.name
        self._totals = totals
        self._wire = wire if wire is not None else Wire(wire_limit(endpoint, pool))
        #: Whether this admission waits in its wire's line (``Wire.wait``).
        self.on_wire_line = False
        self.cap = endpoint.max_in_flight
        self._pool = pool
        self.limit = AimdLimit(config)
        self._rpm = TokenBucket(endpoint.rpm) if endpoint.rpm else None
        self._tpm = TokenBucket(endpoint.tpm) if endpoint.tpm else None
        #: Whether requests need a token estimate (``Endpoint.tpm`` is set).
        self.counts_tokens = self._tpm is not None
        self._max_pause = max_pause
        self._waiters: deque[tuple[asyncio.Future[Slot], float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.epoch = 0
        self.paused_until = -math.inf
        # After a pause one request goes alone, and the others follow once it is answered
        # (the door may have reopened by one place only, as a rolling window does).
        self.probing = False
        # Requests the endpoint's x-ratelimit-remaining-requests still allows, less
        # those sent since, until its window resets (inf: until the next answer, once
        # it has); None when it says nothing.
        self._quota: int | None = None
        self._quota_until = -math.inf
        self.paused_seconds = 0.0
        self.rate_limited = 0

    @property
    def allowed(self) -> int:
        """Requests that may be in flight now."""
        allowed = self.limit.allowed
        if self.cap is not None:
            allowed = min(self.cap, allowed)
        return min(self._pool, allowed) if self._pool else allowed

    def paused_for(self) -> float:
        """Seconds left of the current pause; 0.0 when open."""
        return max(self.paused_until - asyncio.get_running_loop().time(), 0.0)

    @property
    def idle(self) -> bool:
        """Nothing in flight, nobody queued, no pause running: forgetting it loses only
        what it learned."""
        return (
            not self.in_flight
            and not self._waiters
            and self.paused_until <= asyncio.get_running_loop().time()
        )

    def stats(self) -> AdmissionStats:
        return AdmissionStats(
            limit=self.allowed,
            cap=self.cap,
            learned=self.limit.value,
            in_flight=self.in_flight,
            queued=len(self._waiters),
            rate_limited=self.rate_limited,
            paused_seconds=self.paused_seconds,
            paused_for=self.paused_for(),
        )

    def admit_now(self, tokens: float = 0.0) -> Slot | None:
        """A place on the wire when one is free now and nobody is queued for it (what
        ``acquire`` would hand out at once, without a coroutine); None otherwise."""
        if self._waiters:
            return None
        now = asyncio.get_running_loop().time()
        return self._admit(tokens, now) if self._wait(tokens, now) == 0.0 else None

    async def acquire(self, tokens: float = 0.0, *, first: bool = False) -> Slot:
        """A place on the wire, once the callers before this one have theirs.

        Args:
            tokens: the request's estimated tokens, for ``tpm``.
            first: queue ahead of everyone (a retry, which has waited longest).

        Cancelling the wait frees its place; a slot handed to it in that instant is
        passed on to the next caller.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._waiters and self._wait(tokens, now) == 0.0:
            return self._admit(tokens, now)
        future: asyncio.Future[Slot] = loop.create_future()
        waiter = (future, tokens)
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self._queued(1)
        self._dispatch()
        try:
            slot = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.result().release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                    self._queued(-1)
                self._dispatch()
            raise
        return slot

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (an earlier end is kept if later)."""
        now = asyncio.get_running_loop().time()
        until = now + min(seconds, self._max_pause)
        if until > self.paused_until:
            paused = until - max(now, self.paused_until)
            self.paused_seconds += paused
            if self._totals is not None:
                self._totals.paused_seconds += paused
            self.paused_until = until
        self.probing = True

    def steer(self, status: int, headers: Mapping[str, str]) -> None:
        """Pause as an answer's ``Retry-After`` or ``x-ratelimit-*`` headers ask, and
        send no more than its ``x-ratelimit-remaining-requests`` until the next answer."""
        if self._quota_until == math.inf:
            self._quota = None  # the one place a reset window promised: answered
        headers = rate_limit_headers(headers)
        if not headers:
            return  # nothing said about limits: the common answer
        quota = remaining_requests(headers)
        if quota is not None:
            remaining, reset = quota
            # The others in flight were sent after this one was counted, or may have been.
            self._quota = remaining - (self.in_flight - 1)
            self._quota_until = asyncio.get_running_loop().time() + reset
        seconds = pause_from_headers(status, headers)
        if seconds:
            self.pause(seconds)

    def correct_tokens(self, over_charged: float) -> None:
        if self._tpm is not None:
            self._tpm.give_back(over_charged, asyncio.get_running_loop().time())

    def released(self) -> None:
        self.in_flight -= 1
        if self._totals is not None:
            self._totals.in_flight -= 1
        wire = self._wire
        wire.in_flight -= 1
        self._dispatch()
        wire.freed()

    def dispatch(self) -> None:
        """Hand slots to the callers at the head of the line while they may go (a place
        on the wire came free)."""
        self._dispatch()

    def count_rate_limited(self) -> None:
        """One more 429."""
        self.rate_limited += 1
        if self._totals is not None:
            self._totals.rate_limited += 1

    def _queued(self, change: int) -> None:
        if self._totals is not None:
            self._totals.queued += change

    def _wait(self, tokens: float, now: float) -> float:
        """Seconds before a request of ``tokens`` may go; ``inf``: until a slot frees."""
        if self.paused_until > now:
            return self.paused_until - now
        if self._quota is not None and now >= self._quota_until:
            # Its window has reset, by one place or by all: one request goes, and the
            # next answer tells how many may follow. It goes even beside requests still
            # in flight (a long generation may hold one for minutes): sent before the
            # reset, they were counted in the window that reset and hold none of its
            # places, so one more fits whatever they will answer.
            self._quota, self._quota_until = 1, math.inf
        if self._quota is not None and self._quota <= 0 and self.in_flight:
            # An answer in flight will say what is left; failing that, the window's reset
            # (the line is woken then, not left to wait for an answer that may be long).
            return self._quota_until - now
        if self.in_flight >= (1 if self.probing else self.allowed):
            return math.inf
        if self._wire.full_for(self):  # other keys' calls hold the endpoint's places
            return math.inf
        waits = [0.0]
        if self._rpm is not None:
            waits.append(self._rpm.wait(1, now))
        if self._tpm is not None:
            waits.append(self._tpm.wait(tokens, now))
        return max(waits)

    def _admit(self, tokens: float, now: float) -> Slot:
        self.in_flight += 1
        self._wire.in_flight += 1
        if self._totals is not None:
            self._totals.in_flight += 1
        if self._quota is not None:
            self._quota -= 1
        if self._rpm is not None:
            self._rpm.take(1, now)
        if self._tpm is not None:
            self._tpm.take(tokens, now)
        return Slot(self, self.in_flight, self.epoch, tokens)

    def _dispatch(self) -> None:
        """Hand slots to the callers at the head of the line while they may go."""
        if not self._waiters:  # the common case: nobody queues
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiters:
            future, tokens = self._waiters[0]
            if future.done():  # cancelled while waiting
                self._waiters.popleft()
                self._queued(-1)
                continue
            wait = self._wait(tokens, now)
            if wait > 0.0:
                if wait < math.inf:
                    self._wake_at(now + wait)
                return
            self._waiters.popleft()
            self._queued(-1)
            future.set_result(self._admit(tokens, now))

    def _wake_at(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._woken)

    def _woken(self) -> None:
        self._timer = None
        self._dispatch()


class Admissions:
    """Every endpoint's ``Admission``, made on first use; owned by the Transport.

    A call that brings credentials of its own (``Endpoint.callers_credentials``: a proxy
    forwarding each caller's key, ``extra_headers={"Authorization": ...}``) is admitted by
    an ``Admission`` of those credentials at that endpoint: a provider's limits are per
    key, so one caller's 429s and ``Retry-After`` pause that caller's calls, never the
    others'. The endpoint's ``max_in_flight`` and the connection pool still bound every
    call to it, whoever's key it carries: the admissions of one endpoint hold its places
    on the wire together (``Wire``). Idle ones are forgotten when more than
    ``MAX_CALLERS_ADMISSIONS`` are held, or twice as many as were still in use at the
    last look (a burst of keys in flight costs one look per doubling, not one per call).
    """

    def __init__(
        self, config: AdmissionConfig, *, max_pause: float = math.inf, pool: int = 0
    ) -> None:
        self.config = config
        self._max_pause = max_pause
        self._pool = pool
        self._by_name: dict[str, Admission] = {}
        self._callers: dict[tuple[str, str], Admission] = {}
        self._totals: dict[str, AdmissionTotals] = {}
        self._wires: dict[str, Wire] = {}
        # The callers' admissions held when idle ones are next looked for: a burst of
        # more keys than that in flight at once would otherwise look at each per call.
        self._next_sweep = MAX_CALLERS_ADMISSIONS

    def __copy__(self) -> Admissions:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Admissions:
        # Live state (futures, timers): shared, never copied, when ``Stats`` are.
        return self

    def of(self, endpoint: Endpoint) -> Admission:
        """The admission of a call to ``endpoint`` (as sent, with the call's headers)."""
        callers = endpoint.callers_credentials
        if callers is not None:
            return self._of_callers(endpoint, callers)
        found = self._by_name.get(endpoint.name)
        if found is None:
            found = self._by_name[endpoint.name] = self._admission(endpoint)
        return found

    def _admission(self, endpoint: Endpoint, totals: AdmissionTotals | None = None) -> Admission:
        """A new admission of ``endpoint``, holding its places on the wire with the others."""
        wire = self._wires.get(endpoint.name)
        if wire is None:
            wire = self._wires[endpoint.name] = Wire(wire_limit(endpoint, self._pool))
        config, pause, pool = self.config, self._max_pause, self._pool
        return Admission(endpoint, config, max_pause=pause, pool=pool, totals=totals, wire=wire)

    def _of_callers(self, endpoint: Endpoint, callers: str) -> Admission:
        name = endpoint.name
        key = (name, callers)
        found = self._callers.get(key)
        if found is not None:
            return found
        if len(self._callers) >= self._next_sweep:
            for known, admission in list(self._callers.items()):
                if admission.idle:
                    del self._callers[known]
            self._next_sweep = max(MAX_CALLERS_ADMISSIONS, 2 * len(self._callers))
        totals = self._totals.get(name)
        if totals is None:
            totals = self._totals[name] = AdmissionTotals()
            if name not in self._by_name:  # the endpoint's own figures, the callers' added
                self._by_name[name] = self._admission(endpoint)
        found = self._callers[key] = self._admission(endpoint, totals)
        return found

    def paused_for(self, name: str) -> float:
        """Seconds left of endpoint ``name``'s pause; 0.0 when open or never used."""
        found = self._by_name.get(name)
        return 0.0 if found is None else found.paused_for()

    def stats(self) -> dict[str, AdmissionStats]:
        """Each endpoint's figures; those of the calls that brought credentials of their
        own are added to them (``AdmissionStats.plus``)."""
        found = {name: admission.stats() for name, admission in self._by_name.items()}
        for name, totals in self._totals.items():
            found[name] = found[name].plus(totals)
        return found

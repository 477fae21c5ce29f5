"""What is recorded of every call that ends: stats, fleet counters, event hooks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

from limpet.http.admission import Admissions
from limpet.models import Completion, Cost, Embeddings, Usage
from limpet.observe.events import (
    CallEvent,
    EventHook,
    Teller,
    embedding_event,
    emit_event,
    emit_spent,
    event_of,
    spend_hooks,
)
from limpet.observe.fleet import FleetCounters
from limpet.observe.stats import Stats


class Recorder:
    """Counts each ended call once, in this process's ``Stats``, the fleet's counters
    (with a Redis tier) and the ``on_event`` hooks (an event carries its endpoint's
    admission figures, for gauges)."""

    __slots__ = ("_admissions", "_fleet", "_hooks", "_spenders", "_teller", "stats")

    def __init__(
        self,
        stats: Stats,
        fleet: FleetCounters | None,
        hooks: Sequence[EventHook],
        admissions: Admissions | None,
    ) -> None:
        self.stats = stats
        self._fleet = fleet
        self._hooks = tuple(hooks)
        spenders = spend_hooks(self._hooks)
        self._spenders = tuple(spenders.values())
        self._teller = Teller() if spenders else None  # what its events say told them
        self._admissions = admissions

    def finished(
        self,
        model: str,
        completion: Completion,
        started: float,
        *,
        stream: bool = False,
        queued: float = 0.0,
    ) -> None:
        """Count a call that returned (``started``: its ``time.perf_counter()``)."""
        self.stats.record(completion)
        if self._fleet is not None:
            self._fleet.record(model, completion)
        if self._hooks:
            seconds = time.perf_counter() - started
            event = event_of(model, completion, seconds, stream=stream, queued=queued)
            self._emit(self._with_admission(event))

    def failed(
        self,
        model: str,
        error: BaseException,
        started: float,
        *,
        stream: bool = False,
        queued: float = 0.0,
    ) -> None:
        """Count a call that raised."""
        self.stats.errors += 1
        if self._fleet is not None:
            self._fleet.record_error(model)
        self._ended_without_answer(model, error, started, stream, queued)

    def cancelled(
        self,
        model: str,
        cause: BaseException,
        started: float,
        *,
        stream: bool = False,
        queued: float = 0.0,
    ) -> None:
        """Count a call that ended with neither an answer nor an upstream error (``cause``:
        its cancellation, or ``ClientClosedError``); its event names the cause's type, a
        stream closed before its end ``CancelledError``."""
        self.stats.cancelled += 1
        if self._fleet is not None:
            self._fleet.record_cancelled(model)
        error = asyncio.CancelledError() if isinstance(cause, GeneratorExit) else cause
        self._ended_without_answer(model, error, started, stream, queued)

    def _ended_without_answer(
        self, model: str, error: BaseException, started: float, stream: bool, queued: float
    ) -> None:
        """The event of a call that ended by ``error``, for the hooks."""
        if self._hooks:
            seconds = time.perf_counter() - started
            event = event_of(model, None, seconds, stream=stream, error=error, queued=queued)
            self._emit(self._with_admission(event))

    def embedded(self, model: str, result: Embeddings, started: float) -> Embeddings:
        """Count an ``embed()`` call that returned, in the event hooks (its inputs were
        counted by the embedder, and what its requests cost by ``spent``); what it saved
        reaches the fleet's counters here, as a completion's does."""
        if self._fleet is not None and result.cost is not None:
            self._fleet.record_saved(model, result.cost.saved_usd)
        if self._hooks:
            seconds = time.perf_counter() - started
            self._emit(embedding_event(model, result, seconds))
        return result

    def embed_failed(self, model: str, error: BaseException, started: float) -> None:
        """Count an ``embed()`` call that raised (what its requests that answered cost
        was counted by ``spent``)."""
        self.stats.errors += 1
        if self._fleet is not None:
            self._fleet.record_error(model)
        if self._hooks:
            seconds = time.perf_counter() - started
            self._emit(embedding_event(model, None, seconds, error=error))

    def spent(self, model: str, usage: Usage, cost: Cost | None) -> None:
        """Add what one upstream answer (a completion, a stream, an ``/embeddings``
        request) cost to the stats and the fleet's counters. The account stage calls it
        as each answer comes, whether or not the call that sent it is still there: a
        caller that left (cancelled, past its deadline, a stream closed) leaves its
        request to others waiting on it, or to be stored, paid for all the same. Hooks
        with a ``limpet_spent`` method (``PrometheusMetrics``) are told too."""
        self.stats.spent(usage, cost)
        if self._fleet is not None:
            self._fleet.record_spent(model, usage, cost)
        if self._teller is not None:
            emit_spent(self._spenders, self._teller, model, usage, cost)

    async def aclose(self) -> None:
        """Flush the fleet counters (the Client's ``aclose()``)."""
        if self._fleet is not None:
            await self._fleet.aclose()

    def _emit(self, event: CallEvent) -> None:
        if self._teller is not None:
            event = replace(event, told_by=self._teller)
        emit_event(self._hooks, event)

    def _with_admission(self, event: CallEvent) -> CallEvent:
        admissions = self._admissions
        if admissions is None or event.endpoint is None:
            return event
        return replace(event, admission=admissions.stats().get(event.endpoint))

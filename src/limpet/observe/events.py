"""One event per finished call, for metrics, traces and logs: ``Client(on_event=...)``.

Nothing here runs unless a hook is given. A hook that raises is logged and ignored: an
observer must never fail the call it observes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limpet.errors import EmbeddingBatchError
from limpet.models import CacheStatus, Completion, Cost, Embeddings, Usage

__all__ = [
    "CallEvent",
    "EventHook",
    "SpendHook",
    "Teller",
    "embedding_event",
    "emit_event",
    "emit_spent",
    "event_of",
    "spend_hooks",
    "telling",
]

if TYPE_CHECKING:
    from limpet.http.admission import AdmissionStats

logger = logging.getLogger("limpet.events")


@dataclass(frozen=True, slots=True)
class CallEvent:
    """What one ``complete()`` or ``stream()`` call did.

    Attributes:
        model: the model asked for.
        cache: how the call was served, or None when it failed.
        endpoint: the endpoint that served the upstream call, when known.
        usage: tokens of the upstream call (zero when the call failed, but for the
            requests of an ``embed()`` call that answered before ``EmbeddingBatchError``).
        cost_usd: dollars this call spent (0 on a hit or a coalesced call, and 0 when
            ``priced`` is False; an ``embed()`` call that failed with
            ``EmbeddingBatchError`` spent what its requests that answered cost).
        saved_usd: dollars this call saved.
        seconds: wall time of the call (of the whole stream, for a stream).
        stream: True for ``stream()``.
        error: the exception's type name when the call failed.
        priced: False when the call's cost is unknown (no usage, or no price): then
            ``cost_usd`` and ``saved_usd`` are 0 for want of a figure, not a free call.
        inputs: for ``embed()``, the inputs counted as (hits, misses, coalesced); None
            for a completion. ``cache`` is then ``miss`` when any input went upstream,
            else ``coalesced`` when any was another's, else ``hit``.
        queued_seconds: time the call waited for admission to an endpoint.
        admission: the admission figures of ``endpoint`` after the call, when it has them.
        told_by: the Client that tells its spend hooks (``limpet_spent``) what every
            paid answer cost, when it has any (``telling()`` names it while it tells): a
            hook it told counted this call's tokens and dollars already, as they came.
    """

    model: str
    cache: CacheStatus | None
    endpoint: str | None
    usage: Usage
    cost_usd: float
    saved_usd: float
    seconds: float
    stream: bool = False
    error: str | None = None
    priced: bool = True
    inputs: tuple[int, int, int] | None = None
    queued_seconds: float = 0.0
    admission: AdmissionStats | None = None
    told_by: Teller | None = None


EventHook = Callable[[CallEvent], None]


def event_of(
    model: str,
    completion: Completion | None,
    seconds: float,
    *,
    stream: bool = False,
    error: BaseException | None = None,
    queued: float = 0.0,
) -> CallEvent:
    if completion is None:
        return CallEvent(
            model,
            None,
            None,
            Usage(),
            0.0,
            0.0,
            seconds,
            stream,
            type(error).__name__,
            queued_seconds=queued,
        )
    cost = completion.cost
    billed = completion.cache in (CacheStatus.MISS, CacheStatus.BYPASS)
    return CallEvent(
        model,
        completion.cache,
        completion.endpoint,
        completion.usage if billed else Usage(),
        cost.usd if cost else 0.0,
        cost.saved_usd if cost else 0.0,
        seconds,
        stream,
        priced=cost is not None,
        queued_seconds=queued,
    )


# A hook's optional ``limpet_spent(model, usage, cost)``: what each upstream answer cost,
# as it comes, whether or not a call returned it (``Recorder.spent``). Named so that no
# hook has one by chance.
SpendHook = Callable[[str, Usage, Cost | None], None]


def spend_hooks(hooks: Sequence[EventHook]) -> dict[int, SpendHook]:
    """The ``limpet_spent`` methods of the hooks that have one (``PrometheusMetrics``),
    by their hook's ``id()`` (a hook given twice is told once)."""
    found = {id(hook): getattr(hook, "limpet_spent", None) for hook in hooks}
    return {owner: spent for owner, spent in found.items() if callable(spent)}


class Teller:
    """Stands for one Client telling its spend hooks what was spent: its events carry it
    (``CallEvent.told_by``), and ``telling()`` names it while it tells, so a hook (or a
    hook behind any wrapper passing ``limpet_spent`` on) knows which Clients' events it
    has counted already."""

    __slots__ = ("__weakref__",)


_TELLING: ContextVar[Teller | None] = ContextVar("limpet_telling", default=None)


def telling() -> Teller | None:
    """The Client telling its spend hooks now (inside ``limpet_spent``), or None."""
    return _TELLING.get()


def emit_spent(
    hooks: Sequence[SpendHook], teller: Teller, model: str, usage: Usage, cost: Cost | None
) -> None:
    """Tell each of ``hooks`` what one upstream answer cost, as ``teller``; a hook that
    raises is logged, never the call's failure (as ``emit_event``)."""
    reset = _TELLING.set(teller)
    try:
        for spent in hooks:
            try:
                spent(model, usage, cost)
            except Exception:
                logger.exception("limpet: on_event hook %r raised; ignored", spent)
    finally:
        _TELLING.reset(reset)


def emit_event(hooks: Sequence[EventHook], event: CallEvent) -> None:
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            logger.exception("limpet: on_event hook %r raised; ignored", hook)


def embedding_event(
    model: str,
    embeddings: Embeddings | None,
    seconds: float,
    *,
    error: BaseException | None = None,
) -> CallEvent:
    """The event of one ``embed()`` call, with its inputs' counts; a call that failed with
    ``EmbeddingBatchError`` carries what its requests that answered cost."""
    if embeddings is None:
        name = type(error).__name__
        if not isinstance(error, EmbeddingBatchError):
            return CallEvent(model, None, None, Usage(), 0.0, 0.0, seconds, error=name)
        usage, cost = error.usage, error.cost
        return CallEvent(
            model, None, None, usage, _usd(cost), 0.0, seconds, error=name, priced=cost is not None
        )
    e = embeddings
    return CallEvent(
        model,
        e.cache,
        None,
        e.usage,
        _usd(e.cost),
        0.0 if e.cost is None else e.cost.saved_usd,
        seconds,
        priced=e.cost is not None,
        inputs=(e.hits, e.misses, e.coalesced),
    )


def _usd(cost: Cost | None) -> float:
    return 0.0 if cost is None else cost.usd

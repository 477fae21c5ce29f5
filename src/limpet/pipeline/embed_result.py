"""What one ``embed()`` call returns: the vectors in input order, counted per input, or
the error naming the inputs that failed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from limpet.errors import APIStatusError, ClientClosedError, EmbeddingBatchError
from limpet.models import Cost, Embeddings, Usage
from limpet.observe.stats import Stats
from limpet.pipeline.vectors import EmbedInput, Vector, unpack_floats


@dataclass(slots=True)
class Sent:
    """What this call's own upstream requests brought back."""

    vectors: dict[str, Vector] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    usage: Usage | None = None
    cost: float | None = 0.0
    model: str | None = None
    endpoint: str | None = None
    raw: list[dict[str, Any]] = field(default_factory=list)
    from_others: set[str] = field(default_factory=set)  # sent by another process
    # Failed in another process's request, beside inputs of other calls.
    failed_elsewhere: set[str] = field(default_factory=set)


def embeddings_result(
    stats: Stats,
    model: str,
    texts: list[EmbedInput],
    keys: list[str],
    found: dict[str, Vector],
    sent: Sent,
    waiting: dict[str, asyncio.Future[Vector]],
    owned: int,
) -> Embeddings:
    """The vectors in input order, counted per input; or the error naming the failed.

    Its ``cost`` is what this call's requests spent, and what the inputs it did not
    send itself saved (``Cost(spent, saved)``, as a chat call's): an input served from a
    cache tier, by another call's request, or by an identical input earlier in this
    call saved what its vector cost when it was fetched (``Vector.cost_usd``: its share
    of its request's dollars, ``cost_shares``). None when either is unknown (a request
    or a vector of a model without a price): never a saving of $0 claimed. A call that
    fails carries what its requests spent only, and saves nothing, as a chat call.
    """
    vectors: list[list[float] | None] = []
    failed: list[int] = []
    failed_misses: set[str] = set()  # failed inputs this call sent itself: misses still
    hits = 0
    saved: float | None = 0.0
    given: set[str] = set()  # inputs this call sent itself, given once already
    cause: BaseException | None = None
    for position, key in enumerate(keys):
        vector = found.get(key)
        mine = False  # sent upstream for this input by this call: paid for, not saved
        if vector is not None:
            hits += 1
        else:
            vector = sent.vectors.get(key)
            flight = waiting.get(key)
            error = sent.failed.get(key)
            if vector is None and flight is not None:
                if flight.cancelled():
                    error = ClientClosedError("Client closed while the call was running")
                elif flight.exception() is None:
                    vector = flight.result()
                else:
                    error = flight.exception()
            if vector is None:
                failed.append(position)
                if flight is None and key not in sent.from_others:
                    failed_misses.add(key)
                cause = cause or error or ClientClosedError("Client closed during the call")
                vectors.append(None)
                continue
            mine = key in sent.vectors and key not in sent.from_others and key not in given
        if mine:
            given.add(key)
        else:
            saved = known_sum(saved, vector.cost_usd)
        vectors.append(unpack_floats(vector.packed))
    misses = owned - len(sent.from_others)  # sent upstream by this call
    # Answered by another call's request: a failed input was answered by none.
    coalesced = len(texts) - hits - misses - (len(failed) - len(failed_misses))
    stats.embedding_hits += hits
    stats.embedding_misses += misses
    stats.embedding_coalesced += coalesced
    usage = sent.usage or Usage()
    if failed:
        if sent.cost is None:  # ``cost_usd`` leaves out what it paid
            stats.unpriced += 1
        cost = None if sent.cost is None else Cost(sent.cost)
        raise EmbeddingBatchError(
            f"{len(failed)} of {len(texts)} inputs could not be embedded: {cause}",
            failed=tuple(failed),
            vectors=vectors,
            endpoint=getattr(cause, "endpoint", None),
            usage=usage,  # the requests that answered were paid for all the same
            cost=cost,
        ) from cause
    if sent.cost is None or saved is None:  # ``cost_usd`` or ``saved_usd`` leaves it out
        stats.unpriced += 1
        cost = None
    else:
        cost = Cost(sent.cost, saved)
        stats.saved_usd += saved
    return Embeddings(
        [v for v in vectors if v is not None],
        sent.model or model,
        usage,
        cost,
        hits,
        misses,
        coalesced,
        sent.raw,
    )


def known_sum(total: float | None, usd: float | None) -> float | None:
    """``total`` and ``usd`` added; None (unknown) when either is: dollars of which a
    part is unknown are unknown, never the known part alone."""
    return None if total is None or usd is None else total + usd


def settle(
    future: asyncio.Future[Vector], vector: Vector | None, error: BaseException | None
) -> None:
    if future.done():
        return
    if vector is not None:
        future.set_result(vector)
    elif error is None:
        future.cancel()  # the sending was cancelled (aclose)
    else:
        future.set_exception(error)
        future.exception()  # seen: nobody may be waiting for it


#: Statuses a request may get for one of its inputs (one too long for the model, say),
#: not for the model, the key or the account: another call's inputs may have caused them.
_INPUT_REFUSALS = frozenset({400, 413, 422})


def input_refusal(error: BaseException) -> bool:
    """Whether ``error`` may have been caused by one input of the request it failed."""
    return isinstance(error, APIStatusError) and error.status_code in _INPUT_REFUSALS


def refused_as_sent(flight: asyncio.Future[Vector]) -> bool:
    """Whether an awaited input failed with its request's refusal (``input_refusal``)."""
    return not flight.cancelled() and input_refusal(flight.exception() or ValueError())

"""What one ``embed()`` call returns: the vectors in input order, counted per input, or
the error naming the inputs that failed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from limpet.errors import APIStatusError, ClientClosedError, EmbeddingBatchError
from limpet.models import Cost, Embeddings, Usage
from limpet.observe.stats import Stats
from limpet.pipeline.vectors import EmbedInput, unpack_floats


@dataclass(slots=True)
class Sent:
    """What this call's own upstream requests brought back."""

    vectors: dict[str, bytes] = field(default_factory=dict)
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
    found: dict[str, bytes],
    sent: Sent,
    waiting: dict[str, asyncio.Future[bytes]],
    owned: int,
) -> Embeddings:
    """The vectors in input order, counted per input; or the error naming the failed."""
    vectors: list[list[float] | None] = []
    failed: list[int] = []
    failed_misses: set[str] = set()  # failed inputs this call sent itself: misses still
    hits = 0
    cause: BaseException | None = None
    for position, key in enumerate(keys):
        packed = found.get(key)
        if packed is not None:
            hits += 1
        else:
            packed = sent.vectors.get(key)
            flight = waiting.get(key)
            error = sent.failed.get(key)
            if packed is None and flight is not None:
                if flight.cancelled():
                    error = ClientClosedError("Client closed while the call was running")
                elif flight.exception() is None:
                    packed = flight.result()
                else:
                    error = flight.exception()
            if packed is None:
                failed.append(position)
                if flight is None and key not in sent.from_others:
                    failed_misses.add(key)
                cause = cause or error or ClientClosedError("Client closed during the call")
                vectors.append(None)
                continue
        vectors.append(unpack_floats(packed))
    misses = owned - len(sent.from_others)  # sent upstream by this call
    # Answered by another call's request: a failed input was answered by none.
    coalesced = len(texts) - hits - misses - (len(failed) - len(failed_misses))
    stats.embedding_hits += hits
    stats.embedding_misses += misses
    stats.embedding_coalesced += coalesced
    usage = sent.usage or Usage()
    cost = None if sent.cost is None else Cost(sent.cost)
    if cost is None:  # returned or raised: ``cost_usd`` leaves out what it paid
        stats.unpriced += 1
    if failed:
        raise EmbeddingBatchError(
            f"{len(failed)} of {len(texts)} inputs could not be embedded: {cause}",
            failed=tuple(failed),
            vectors=vectors,
            endpoint=getattr(cause, "endpoint", None),
            usage=usage,  # the requests that answered were paid for all the same
            cost=cost,
        ) from cause
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


def settle(
    future: asyncio.Future[bytes], vector: bytes | None, error: BaseException | None
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


def refused_as_sent(flight: asyncio.Future[bytes]) -> bool:
    """Whether an awaited input failed with its request's refusal (``input_refusal``)."""
    return not flight.cancelled() and input_refusal(flight.exception() or ValueError())

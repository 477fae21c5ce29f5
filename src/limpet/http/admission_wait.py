"""One upstream attempt's wait for admission: its ticket at once when nothing holds it,
else a place in its endpoint's line, bounded by the call's deadline, with the waiting
call told what it waits for and how long it queued.

The admission itself (limits, queues, pauses) is ``limpet.http.admission``'s; the
transport asks here before every attempt it sends.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from limpet.config import Endpoint
from limpet.http.admission import Admissions
from limpet.http.admission_rules import estimated_tokens
from limpet.http.admission_slots import UNADMITTED, Ticket
from limpet.http.retrying import QueuedTooLong

__all__ = ["Waiting", "admit", "admitted_now"]


class Waiting(Protocol):
    """A call the transport keeps informed (``limpet.pipeline.calls.Call``): what it
    waits for now, for a timeout's message, the seconds it queued for admission, and
    whether its request's first attempt is queued still (``unsent``): ended now, it sent
    nothing."""

    waiting_for: str
    queued: float
    unsent: bool


def admitted_now(
    admissions: Admissions | None, endpoint: Endpoint, payload: bytes
) -> Ticket | None:
    """The ticket of an attempt that may go at once (admission is off, or nobody
    queues and no limit holds it), without a coroutine; None: ``admit`` it."""
    if admissions is None:
        return UNADMITTED
    admission = admissions.of(endpoint)
    return admission.admit_now(estimated_tokens(payload) if admission.counts_tokens else 0.0)


async def admit(
    admissions: Admissions | None,
    endpoint: Endpoint,
    payload: bytes,
    deadline: float | None,
    waiting: Waiting | None,
    retry: bool,
) -> Ticket:
    """Wait (first come, first served; a retry first of all) for a place on the wire.

    Raises:
        APITimeoutError: the deadline passes, or the endpoint's pause outlasts it,
            before the call is admitted; nothing was sent.
    """
    if admissions is None:
        return UNADMITTED
    admission = admissions.of(endpoint)
    if waiting is not None and not retry:
        waiting.unsent = True
    if deadline is not None and admission.paused_until >= deadline:
        raise QueuedTooLong(
            f"endpoint {endpoint.name!r} is paused by its rate limit past the call's "
            "deadline; the call was queued for admission and nothing was sent",
            endpoint=endpoint.name,
        )
    if waiting is not None:
        waiting.waiting_for = (
            f"admission to endpoint {endpoint.name!r}, queued behind other calls (nothing sent)"
        )
    queued_at = asyncio.get_running_loop().time()
    tokens = estimated_tokens(payload) if admission.counts_tokens else 0.0
    if deadline is None:  # no scope to open: nothing could expire it
        slot = await admission.acquire(tokens, first=retry)
    else:
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                slot = await admission.acquire(tokens, first=retry)
        except TimeoutError:
            if not scope.expired():
                raise
            raise QueuedTooLong(
                f"the call's deadline passed while it was queued for admission to "
                f"endpoint {endpoint.name!r}; nothing was sent",
                endpoint=endpoint.name,
            ) from None
    if waiting is not None:
        waiting.unsent = False
        waiting.queued += asyncio.get_running_loop().time() - queued_at
        waiting.waiting_for = f"an answer from endpoint {endpoint.name!r}"
    return slot

"""How ``MemcachedCache``'s write queue (``limpet.cache.writes``) sends a batch.

Memcached has no pipeline in the client, so a batch goes out as concurrent commands over
the client's connection pool, within one write timeout counted in the server's time: the
batch waits for places for its commands in this process first (``limpet.cache.slots``),
outside that timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeAlias

from limpet.cache.budget import server_deadline
from limpet.cache.slots import ConnectionSlots
from limpet.cache.writes import BatchOutcome, SendBatch, Write

__all__ = ["WRITE_BATCH", "SendOne", "concurrent_writes"]

#: Starts one write (full key, value or None, monotonic expiry) on a place of the slots
#: already held, which is the write's from this call on (given back once, as it ends);
#: its outcome is None when it landed, or Memcached's refusal (the server answered: it
#: is up), and its failure an exception (the server could not be reached). Raises
#: nothing but what is no ``Exception`` (and has given the place back then).
SendOne: TypeAlias = Callable[[str, bytes | None, float], asyncio.Future[Exception | None]]

#: Enough to keep the connection pool busy, small enough to fit in one write timeout.
WRITE_BATCH = 32


def concurrent_writes(send_one: SendOne, slots: ConnectionSlots) -> SendBatch:
    """Sends a batch of writes as concurrent ``send_one`` calls within the timeout, each
    once it holds one of ``slots``."""

    async def send(batch: list[tuple[str, Write]], budget: float) -> BatchOutcome:
        async with server_deadline(budget):
            started: list[asyncio.Future[Exception | None]] = []
            try:
                for key, (value, expires_at) in batch:
                    await slots.take()
                    started.append(send_one(key, value, expires_at))  # the place is its
                refusals = await asyncio.gather(*started)
            except BaseException:
                # Out of time, or cancelled, before all were sent: nothing waits for
                # those that were, whose failures must not be logged as never read.
                for reply in started:
                    reply.cancel()
                raise
        # Memcached answered every command, even if it refused some: it is up.
        return BatchOutcome([r for r in refusals if r is not None])

    return send

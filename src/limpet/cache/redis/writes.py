"""How ``RedisCache``'s write queue (``limpet.cache.writes``) sends a batch: one pipeline."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from limpet.cache.budget import server_deadline
from limpet.cache.slots import ConnectionSlots
from limpet.cache.writes import BatchOutcome, SendBatch, Write

__all__ = ["WRITE_BATCH", "RedisClient", "pipelined_writes", "redis_replied"]

#: What a ``RedisCache`` talks to: one server, or a cluster.
RedisClient: TypeAlias = Redis | RedisCluster

#: Enough to amortise a round trip, small enough that one batch fits in a write timeout.
WRITE_BATCH = 64


def pipelined_writes(client: RedisClient, slots: ConnectionSlots | None = None) -> SendBatch:
    """Sends a batch of writes to ``client`` as one pipeline, timed by the server, once
    one of ``slots`` is free (a cluster cache's places, see ``RedisCache``).

    On a cluster, the commands that failed for want of a live connection (one a node
    closed while it sat idle: a restart, an idle timeout) are sent once more, on a fresh
    one, as redis-py itself does for a single server's pipeline; both tries share the
    budget."""

    async def send(batch: list[tuple[str, Write]], budget: float) -> BatchOutcome:
        async with server_deadline(budget), slots or contextlib.nullcontext():
            results = await _pipelined(client, batch)
            if isinstance(client, RedisCluster):
                again = [i for i, r in enumerate(results) if _unsent(r)]
                if again:
                    retried = await _pipelined(client, [batch[i] for i in again])
                    for i, result in zip(again, retried, strict=True):
                        results[i] = result
        refused = [r for r in results if isinstance(r, Exception)]
        # A cluster pipeline reports a node it could not reach per command.
        return BatchOutcome(refused, answered=all(map(redis_replied, refused)))

    return send


async def _pipelined(client: RedisClient, batch: list[tuple[str, Write]]) -> list[object]:
    """Each write's result (an exception for one that failed), in one pipeline."""
    now = time.monotonic()
    # On a cluster the pipeline splits itself by node; every command here touches one
    # key, so none can cross slots.
    async with client.pipeline(transaction=False) as pipe:
        for key, (value, expires_at) in batch:
            if value is None or expires_at <= now:
                pipe.delete(key)
            elif expires_at == math.inf:
                pipe.set(key, value)
            else:
                # Redis-native TTL: the entry cannot outlive its TTL even if no process
                # ever reads it again. Rounded up: PX 0 is an error.
                pipe.set(key, value, px=math.ceil((expires_at - now) * 1000))
        return list(await pipe.execute(raise_on_error=False))


def _unsent(result: object) -> bool:
    """Whether ``result`` says its command found no live connection to go out on."""
    return isinstance(result, RedisConnectionError)


def redis_replied(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's own error reply (OOM, WRONGTYPE, ...): Redis is up, so
    it must not count against the breaker. A cluster that reports itself down is not up.
    """
    return isinstance(exc, ResponseError) and not isinstance(exc, ClusterDownError)

"""How ``RedisCache``'s write queue (``limpet.cache.writes``) sends a batch: one pipeline."""

from __future__ import annotations

import math
import time
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ResponseError

from limpet.cache.redis.reads import server_deadline
from limpet.cache.writes import BatchOutcome, SendBatch, Write

__all__ = ["WRITE_BATCH", "RedisClient", "pipelined_writes", "redis_replied"]

#: What a ``RedisCache`` talks to: one server, or a cluster.
RedisClient: TypeAlias = Redis | RedisCluster

#: Enough to amortise a round trip, small enough that one batch fits in a write timeout.
WRITE_BATCH = 64


def pipelined_writes(client: RedisClient) -> SendBatch:
    """Sends a batch of writes to ``client`` as one pipeline, timed by the server."""

    async def send(batch: list[tuple[str, Write]], budget: float) -> BatchOutcome:
        now = time.monotonic()
        # On a cluster the pipeline splits itself by node; every command here touches one
        # key, so none can cross slots.
        async with server_deadline(budget), client.pipeline(transaction=False) as pipe:
            for key, (value, expires_at) in batch:
                if value is None or expires_at <= now:
                    pipe.delete(key)
                elif expires_at == math.inf:
                    pipe.set(key, value)
                else:
                    # Redis-native TTL: the entry cannot outlive its TTL even if no
                    # process ever reads it again. Rounded up: PX 0 is an error.
                    pipe.set(key, value, px=math.ceil((expires_at - now) * 1000))
            results = await pipe.execute(raise_on_error=False)
        refused = [r for r in results if isinstance(r, Exception)]
        # A cluster pipeline reports a node it could not reach per command.
        return BatchOutcome(refused, answered=all(map(redis_replied, refused)))

    return send


def redis_replied(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's own error reply (OOM, WRONGTYPE, ...): Redis is up, so
    it must not count against the breaker. A cluster that reports itself down is not up.
    """
    return isinstance(exc, ResponseError) and not isinstance(exc, ClusterDownError)

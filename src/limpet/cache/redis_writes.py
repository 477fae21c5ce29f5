"""The write queue behind ``RedisCache.set``: writes never make a caller wait.

A value is queued and a single background task sends queued values to Redis in
pipelined batches, each bounded by the write timeout and gated by the cache's circuit
breaker. The queue is bounded too: beyond ``max_pending`` values new writes are dropped
and counted, since a cache that buffers without limit while Redis is slow would turn
an outage into a memory leak.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ResponseError

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.redis_reads import server_deadline
from limpet.errors import CacheUnavailableError

__all__ = ["RedisClient", "Write", "WriteQueue", "redis_replied"]

logger = logging.getLogger("limpet.cache")

#: What a ``RedisCache`` talks to: one server, or a cluster.
RedisClient: TypeAlias = Redis | RedisCluster

#: A queued write: the value (None deletes the key) and its monotonic expiry time.
Write: TypeAlias = tuple[bytes | None, float]

# Enough to amortise a round trip, small enough that one batch fits in a write timeout.
_WRITE_BATCH = 64


class WriteQueue:
    """Writes waiting for Redis, oldest first, and the one task that sends them.

    Keys are full Redis keys, so a newer value for a key replaces an older one that was
    never sent. Until a value has landed, ``queued()`` answers for it, so this process
    reads its own writes at once.

    Args:
        client: where the writes go.
        breaker: the cache's circuit breaker: an open one fails batches without sending.
        timeout: seconds one batch may take.
        max_pending: queued writes beyond which new ones are dropped.
        where: the server, for log messages (never credentials).
    """

    __slots__ = (
        "_breaker",
        "_client",
        "_dropped",
        "_failed",
        "_failing",
        "_inflight",
        "_pending",
        "_where",
        "_writer",
        "_writing",
        "max_pending",
        "timeout",
    )

    def __init__(
        self,
        client: RedisClient,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        max_pending: int,
        where: str,
    ) -> None:
        self._client = client
        self._breaker = breaker
        self.timeout = timeout
        self.max_pending = max_pending
        self._where = where
        self._pending: OrderedDict[str, Write] = OrderedDict()
        # The batch the writer is sending now, and an event set when it is done.
        self._writing: dict[str, Write] = {}
        self._inflight: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._dropped = 0
        self._failed = 0
        self._failing = False

    def __len__(self) -> int:
        """Writes queued or being sent."""
        return len(self._pending) + len(self._writing)

    @property
    def dropped(self) -> int:
        """Writes never attempted: the queue was full, or it was closed before they went."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Writes attempted that did not land: Redis refused them, was down, or too slow."""
        return self._failed

    def queued(self, key: str) -> Write | None:
        """The write of ``key`` not yet landed, if any."""
        return self._pending.get(key) or self._writing.get(key)

    def put(self, key: str, value: bytes | None, ttl: float) -> None:
        """Queue ``value`` (None: delete) under ``key`` for ``ttl`` seconds; start the
        writer if it is idle. Dropped and counted when the queue is full."""
        pending = self._pending
        if key not in pending and len(pending) >= self.max_pending:
            self._dropped += 1
            return
        pending[key] = (value if ttl > 0 else None, time.monotonic() + ttl)
        pending.move_to_end(key)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="limpet-redis-writer"
            )

    async def discard(self, key: str) -> None:
        """Forget ``key``'s queued write; if it is being sent, wait until it has landed,
        so that a DEL sent next cannot be overtaken by it.

        Raises:
            CacheUnavailableError: the batch in flight did not finish in time.
        """
        self._pending.pop(key, None)
        if key in self._writing:
            await self._await_inflight()

    async def discard_all(self) -> None:
        """Forget every queued write and wait for the batch in flight, if any.

        Raises:
            CacheUnavailableError: the batch in flight did not finish in time.
        """
        self._pending.clear()
        await self._await_inflight()

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        while (writer := self._writer) is not None and not writer.done():
            # Shielded: a caller that gives up waiting must not cancel everyone's writes.
            await asyncio.shield(writer)

    async def close(self, grace: float) -> None:
        """Send what is queued for at most ``grace`` seconds, then drop the rest."""
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except TimeoutError:
            logger.warning(
                "limpet cache: %d writes to redis at %s dropped on close after %.1f s",
                len(self),
                self._where,
                grace,
            )
        finally:
            writer, self._writer = self._writer, None
            if writer is not None and not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._dropped += len(self._pending)
            self._pending.clear()

    async def _await_inflight(self) -> None:
        done = self._inflight
        if done is None:
            return
        try:
            # The batch is bounded by the write timeout; waiting on it is too.
            async with asyncio.timeout(self.timeout * 2):
                await done.wait()
        except TimeoutError as exc:
            raise CacheUnavailableError(
                f"redis write in flight did not finish ({self._where})"
            ) from exc

    async def _drain(self) -> None:
        pending = self._pending
        while pending:
            batch = [pending.popitem(last=False) for _ in range(min(len(pending), _WRITE_BATCH))]
            self._writing = dict(batch)
            self._inflight = done = asyncio.Event()
            try:
                await self._send(batch)
            finally:
                self._writing = {}
                self._inflight = None
                done.set()

    async def _send(self, batch: list[tuple[str, Write]]) -> None:
        breaker = self._breaker
        if not breaker.allow():
            self._failed += len(batch)
            return
        epoch = breaker.epoch
        now = time.monotonic()
        try:
            # On a cluster the pipeline splits itself by node; every command here touches
            # one key, so none can cross slots.
            async with (
                server_deadline(self.timeout),
                self._client.pipeline(transaction=False) as pipe,
            ):
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
        except asyncio.CancelledError:
            breaker.release(epoch)
            raise
        except Exception as exc:
            breaker.record_failure(epoch)
            self._failed += len(batch)
            self._fault(len(batch), exc)
            return
        refused = [r for r in results if isinstance(r, Exception)]
        if refused and not all(map(redis_replied, refused)):
            # A cluster pipeline reports a node it could not reach per command.
            breaker.record_failure(epoch)
        else:
            # Redis answered, even if it refused some commands (OOM): it is up.
            breaker.record_success(epoch)
        if refused:
            self._failed += len(refused)
            self._fault(len(refused), refused[0])
        elif self._failing:
            self._failing = False
            logger.info("limpet cache: writes to redis at %s resumed", self._where)

    def _fault(self, count: int, exc: BaseException) -> None:
        # No caller sees a background write fail, so this is the one place it is told.
        if not self._failing:
            self._failing = True
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            logger.warning(
                "limpet cache: %d writes to redis at %s failed (logged once per outage): %s",
                count,
                self._where,
                reason,
            )


def redis_replied(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's own error reply (OOM, WRONGTYPE, ...): Redis is up, so
    it must not count against the breaker. A cluster that reports itself down is not up.
    """
    return isinstance(exc, ResponseError) and not isinstance(exc, ClusterDownError)

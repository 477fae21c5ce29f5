"""The write queue behind ``MemcachedCache.set``: writes never make a caller wait.

The same design as Redis's (``redis_writes``): values are queued, newest value per key
wins, one background task sends them in bounded batches under the cache's circuit
breaker, and beyond ``max_pending`` new writes are dropped and counted. It is a module of
its own because ``redis_writes`` needs the redis package, which a Memcached user need
not install. Memcached has no pipeline in the client, so a batch is sent as concurrent
commands over the client's connection pool, within one write timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from limpet.cache.breaker import CircuitBreaker
from limpet.errors import CacheUnavailableError

__all__ = ["SendOne", "Write", "WriteQueue"]

logger = logging.getLogger("limpet.cache")

#: A queued write: the value (None deletes the key) and its monotonic expiry time.
Write: TypeAlias = tuple[bytes | None, float]

#: Sends one write (full key, value or None, monotonic expiry); returns None when it
#: landed, or Memcached's refusal (the server answered: it is up). Raises when the server
#: could not be reached.
SendOne: TypeAlias = Callable[[str, bytes | None, float], Awaitable[Exception | None]]

# Enough to keep the connection pool busy, small enough to fit in one write timeout.
_WRITE_BATCH = 32


class WriteQueue:
    """Writes waiting for Memcached, oldest first, and the one task that sends them.

    Until a value has landed, ``queued()`` answers for it, so this process reads its own
    writes at once.

    Args:
        send: sends one write.
        breaker: the cache's circuit breaker: an open one fails batches without sending.
        timeout: seconds one batch may take.
        max_pending: queued writes beyond which new ones are dropped.
        where: the servers, for log messages.
    """

    __slots__ = (
        "_breaker",
        "_dropped",
        "_failed",
        "_failing",
        "_inflight",
        "_pending",
        "_send_one",
        "_where",
        "_writer",
        "_writing",
        "max_pending",
        "timeout",
    )

    def __init__(
        self,
        send: SendOne,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        max_pending: int,
        where: str,
    ) -> None:
        self._send_one = send
        self._breaker = breaker
        self.timeout = timeout
        self.max_pending = max_pending
        self._where = where
        self._pending: OrderedDict[str, Write] = OrderedDict()
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
        """Writes attempted that did not land: refused, or the server was down or slow."""
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
                self._drain(), name="limpet-memcached-writer"
            )

    async def discard(self, key: str) -> None:
        """Forget ``key``'s queued write; if it is being sent, wait until it has landed,
        so that a delete sent next cannot be overtaken by it.

        Raises:
            CacheUnavailableError: the batch in flight did not finish in time.
        """
        self._pending.pop(key, None)
        if key in self._writing:
            await self._await_inflight()

    async def discard_all(self) -> None:
        """Forget every queued write and wait for the batch in flight, if any."""
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
                "limpet cache: %d writes to memcached at %s dropped on close after %.1f s",
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
            async with asyncio.timeout(self.timeout * 2):
                await done.wait()
        except TimeoutError as exc:
            raise CacheUnavailableError(
                f"memcached write in flight did not finish ({self._where})"
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
        try:
            async with asyncio.timeout(self.timeout):
                refusals = await asyncio.gather(
                    *(self._send_one(key, value, expires_at) for key, (value, expires_at) in batch)
                )
        except asyncio.CancelledError:
            breaker.release(epoch)
            raise
        except Exception as exc:
            breaker.record_failure(epoch)
            self._failed += len(batch)
            self._fault(len(batch), exc)
            return
        # Memcached answered every command, even if it refused some: it is up.
        breaker.record_success(epoch)
        refused = [r for r in refusals if r is not None]
        if refused:
            self._failed += len(refused)
            self._fault(len(refused), refused[0])
        elif self._failing:
            self._failing = False
            logger.info("limpet cache: writes to memcached at %s resumed", self._where)

    def _fault(self, count: int, exc: BaseException) -> None:
        # No caller sees a background write fail, so this is the one place it is told.
        if not self._failing:
            self._failing = True
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            logger.warning(
                "limpet cache: %d writes to memcached at %s failed (logged once per outage): %s",
                count,
                self._where,
                reason,
            )

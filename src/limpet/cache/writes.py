"""The write queue behind a shared tier's ``set``: writes never make a caller wait.

A value is queued and a single background task sends queued values in batches, each
bounded by the write timeout and gated by the cache's circuit breaker; how a batch goes
out is the backend's (a Redis pipeline, concurrent Memcached commands). The queue is
bounded too: beyond ``max_pending`` values new writes are dropped and counted, since a
cache that buffers without limit while its server is slow would turn an outage into a
memory leak. A caller with more to store than the queue holds (one ``embed()`` of
thousands of inputs) does not have to lose the rest while the server is healthy:
``wait_for_room()`` waits, while the breaker is closed, until the writer has taken some,
so a burst is fed in pieces the queue absorbs; only a failing tier drops writes. No backend
package is imported here, so every backend shares this one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.budget import QueueTimeout
from limpet.errors import CacheUnavailableError

__all__ = ["BatchOutcome", "SendBatch", "Write", "WriteQueue"]

logger = logging.getLogger("limpet.cache")

#: A queued write: the value (None deletes the key) and its monotonic expiry time.
Write: TypeAlias = tuple[bytes | None, float]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What the server said to one batch of writes.

    Attributes:
        refused: the commands it answered with an error (out of memory, too large).
        answered: whether the server itself answered (it is up, whatever it refused);
            False when the batch reached no server (a cluster node down).
    """

    refused: Sequence[BaseException] = ()
    answered: bool = True


#: Sends one batch of (full key, write) within a budget of seconds; raises when the server
#: could not be reached in time.
SendBatch: TypeAlias = Callable[[list[tuple[str, Write]], float], Awaitable[BatchOutcome]]


class WriteQueue:
    """Writes waiting for a shared tier, oldest first, and the one task that sends them.

    Keys are the tier's full keys, so a newer value for a key replaces an older one that
    was never sent. Until a value has landed, ``queued()`` answers for it, so this process
    reads its own writes at once.

    Args:
        send: sends one batch (the backend's: a Redis pipeline, concurrent Memcached
            commands) within the timeout it is given.
        breaker: the cache's circuit breaker: an open one fails batches without sending.
        timeout: seconds one batch may take.
        max_pending: queued writes beyond which new ones are dropped.
        where: the server, for log messages (never credentials).
        kind: the backend's name, for log messages and the writer task's name.
        batch_size: writes sent in one batch at most.
    """

    __slots__ = (
        "_batch_size",
        "_breaker",
        "_closed",
        "_dropped",
        "_failed",
        "_failing",
        "_inflight",
        "_kind",
        "_pending",
        "_room_waiters",
        "_send_batch",
        "_where",
        "_writer",
        "_writing",
        "max_pending",
        "timeout",
    )

    def __init__(
        self,
        send: SendBatch,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        max_pending: int,
        where: str,
        kind: str,
        batch_size: int,
    ) -> None:
        self._send_batch = send
        self._breaker = breaker
        self._kind = kind
        self._batch_size = batch_size
        self.timeout = timeout
        self.max_pending = max_pending
        self._where = where
        self._pending: OrderedDict[str, Write] = OrderedDict()
        # The batch the writer is sending now, and an event set when it is done.
        self._writing: dict[str, Write] = {}
        self._inflight: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # Callers of wait_for_room() waiting for the writer to take a batch (or the tier
        # to fail); ``_closed``: no room is waited for any more.
        self._room_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._dropped = 0
        self._failed = 0
        self._failing = False

    def __len__(self) -> int:
        """Writes queued or being sent."""
        return len(self._pending) + len(self._writing)

    @property
    def dropped(self) -> int:
        """Writes given up: the queue was full, or it was closed before they had landed."""
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
                self._drain(), name=f"limpet-{self._kind}-writer"
            )

    def forget(self, key: str, value: bytes) -> None:
        """``value`` landed under ``key`` another way (a flight's release stored it):
        its write, if still queued with that very value, is not sent. A write queued
        since with another value is kept."""
        pending = self._pending.get(key)
        if pending is not None and pending[0] == value:
            del self._pending[key]
            self._wake()

    @property
    def room(self) -> int | None:
        """Writes ``put()`` takes now without dropping any; None when no bound is waited
        for: the breaker is not closed (the tier is failing, and a write beyond the bound
        is dropped), or the queue is closed."""
        if self._closed or self._breaker.state != "closed":
            return None
        return max(self.max_pending - len(self._pending), 0)

    async def wait_for_room(self) -> None:
        """Wait until ``room`` is not 0: the writer has taken a batch off the queue, or
        the tier is failing, or the queue was closed. Bounded: the writer runs while
        anything is queued, each batch within the write timeout once it holds a
        connection, and its wait for one within twenty (``limpet.cache.budget``)."""
        while self.room == 0:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

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
        """Forget every queued write and wait for the batch in flight, if any.

        Raises:
            CacheUnavailableError: the batch in flight did not finish in time.
        """
        self._pending.clear()
        self._wake()
        await self._await_inflight()

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        while (writer := self._writer) is not None and not writer.done():
            # Shielded: a caller that gives up waiting must not cancel everyone's writes.
            await asyncio.shield(writer)

    async def close(self, grace: float) -> None:
        """Send what is queued for at most ``grace`` seconds, then drop the rest."""
        self._closed = True
        self._wake()
        try:
            async with asyncio.timeout(grace):
                await self.flush()
        except TimeoutError:
            logger.warning(
                "limpet cache: %d writes to %s at %s dropped on close after %.1f s",
                len(self),
                self._kind,
                self._where,
                grace,
            )
        finally:
            # Counted before the writer is stopped: the batch it is sending is cut short
            # too (the log above counts it), and stopping it forgets that batch.
            self._dropped += len(self)
            writer, self._writer = self._writer, None
            if writer is not None and not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
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
                f"{self._kind} write in flight did not finish ({self._where})"
            ) from exc

    async def _drain(self) -> None:
        pending = self._pending
        while pending:
            batch = [
                pending.popitem(last=False) for _ in range(min(len(pending), self._batch_size))
            ]
            self._writing = dict(batch)
            self._inflight = done = asyncio.Event()
            self._wake()  # room for as many as the batch took
            try:
                await self._send(batch)
            finally:
                self._writing = {}
                self._inflight = None
                done.set()
                self._wake()  # the breaker may have opened: nobody waits then

    def _wake(self) -> None:
        """Let the callers of ``wait_for_room()`` look again."""
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _send(self, batch: list[tuple[str, Write]]) -> None:
        breaker = self._breaker
        if not breaker.allow():
            self._failed += len(batch)
            return
        epoch = breaker.epoch
        try:
            outcome = await self._send_batch(batch, self.timeout)
        except asyncio.CancelledError:
            breaker.release(epoch)
            raise
        except QueueTimeout as exc:
            # No connection of this process's own came free: nothing was sent, and the
            # server is not to blame.
            breaker.release(epoch)
            self._failed += len(batch)
            self._fault(len(batch), exc)
            return
        except Exception as exc:
            breaker.record_failure(epoch)
            self._failed += len(batch)
            self._fault(len(batch), exc)
            return
        if outcome.answered:
            # The server answered, even if it refused some commands (out of memory): up.
            breaker.record_success(epoch)
        else:
            breaker.record_failure(epoch)
        refused = outcome.refused
        if refused:
            self._failed += len(refused)
            self._fault(len(refused), refused[0])
        elif self._failing:
            self._failing = False
            logger.info("limpet cache: writes to %s at %s resumed", self._kind, self._where)

    def _fault(self, count: int, exc: BaseException) -> None:
        # No caller sees a background write fail, so this is the one place it is told.
        if not self._failing:
            self._failing = True
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            logger.warning(
                "limpet cache: %d writes to %s at %s failed (logged once per outage): %s",
                count,
                self._kind,
                self._where,
                reason,
            )

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

A delete the tier cannot take now (the breaker open, the server failing, a write of the
key on its way) leaves the key owed a delete (``limpet.cache.owed_deletes``): the writer
sends it after whatever of the key was already sent, once the tier takes commands again
(``resume()``), outside ``max_pending``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.budget import QueueTimeout
from limpet.cache.owed_deletes import OwedDeletes
from limpet.errors import CacheUnavailableError

__all__ = ["BatchOutcome", "ClearAll", "SendBatch", "Write", "WriteQueue"]

logger = logging.getLogger("limpet.cache")

#: A queued write: the value (None deletes the key) and its monotonic expiry time.
Write: TypeAlias = tuple[bytes | None, float]

#: Seconds at most between two tries of deletes owed to a tier that keeps failing them.
_MAX_RETRY_DELAY = 30.0

# What a key owed a delete reads as (a miss), and how its delete is sent.
_DELETED: Write = (None, math.inf)
_DELETE: Write = (None, -math.inf)

#: Clears the tier (every key under its prefix), through its breaker; raises
#: ``CacheUnavailableError`` when it could not.
ClearAll: TypeAlias = Callable[[], Awaitable[object]]


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
    reads its own writes at once; a key owed a delete it answers as a miss.

    Args:
        send: sends one batch (the backend's: a Redis pipeline, concurrent Memcached
            commands) within the timeout it is given.
        clear: clears the tier, for a clear owed (``limpet.cache.owed_deletes``).
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
        "_clear",
        "_closed",
        "_dropped",
        "_failed",
        "_failing",
        "_kind",
        "_owed",
        "_owed_due",
        "_pending",
        "_retry",
        "_retry_delay",
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
        clear: ClearAll,
        timeout: float,
        max_pending: int,
        where: str,
        kind: str,
        batch_size: int,
    ) -> None:
        self._send_batch = send
        self._clear = clear
        self._breaker = breaker
        self._kind = kind
        self._batch_size = batch_size
        self.timeout = timeout
        self.max_pending = max_pending
        self._where = where
        self._pending: OrderedDict[str, Write] = OrderedDict()
        # The batch the writer is sending now.
        self._writing: dict[str, Write] = {}
        self._writer: asyncio.Task[None] | None = None
        # Callers of wait_for_room() waiting for the writer to take a batch (or the tier
        # to fail); ``_closed``: no room is waited for any more.
        self._room_waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._dropped = 0
        self._failed = 0
        self._failing = False
        # Keys that must not keep an older value in the tier, bounded as the queue is;
        # ``_owed_due``: the writer is to try them (not again after a failure, until the
        # tier takes a command again: no tight loop against a failing server).
        self._owed = OwedDeletes(limit=max_pending)
        self._owed_due = False
        # The next try of what is owed after a failure (a process left idle must still
        # send it), backing off from one write timeout while tries keep failing.
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = timeout

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

    @property
    def owed_deletes(self) -> int:
        """Keys owed a delete not yet landed (a clear owed counts none)."""
        return len(self._owed)

    @property
    def owing(self) -> bool:
        """Whether a delete or a clear is owed."""
        return self._owed.active

    def queued(self, key: str) -> Write | None:
        """The write of ``key`` not yet landed, if any; a deleting one when ``key`` is
        owed a delete (or a clear is owed)."""
        owed = self._owed
        if owed.active and owed.covers(key):
            return _DELETED
        return self._pending.get(key) or self._writing.get(key)

    def put(self, key: str, value: bytes | None, ttl: float) -> None:
        """Queue ``value`` (None: delete) under ``key`` for ``ttl`` seconds; start the
        writer if it is idle. Dropped and counted when the queue is full, and while
        ``key`` is owed a delete: that goes first (a later write stores it)."""
        pending = self._pending
        if self._owed.active and self._owed.owes(key):
            self._dropped += 1
            return
        if key not in pending and len(pending) >= self.max_pending:
            self._dropped += 1
            return
        pending[key] = (value if ttl > 0 else None, time.monotonic() + ttl)
        pending.move_to_end(key)
        self._start()

    def owe_delete(self, key: str) -> None:
        """The tier cannot take a delete of ``key`` now (refused, failed, or a write of it
        is on its way): drop its queued write, and send a delete of it after anything of
        it already sent, once the tier takes commands (``resume()``). Past the bound a
        clear is owed instead (logged)."""
        self._pending.pop(key, None)
        if not self._owed.owe(key):
            logger.warning(
                "limpet cache: more than %d deletes owed to %s at %s: it is to be cleared "
                "once it is back (read as empty here until then)",
                self._owed.limit,
                self._kind,
                self._where,
            )
        self._resume()

    def owe_clear(self) -> None:
        """A clear of the tier could not be made now: make it once the tier takes
        commands (read as empty here until then)."""
        self._owed.owe_clear()
        self._resume()

    def owed_mark(self, key: str) -> int | None:
        """``key``'s mark while it is owed a delete (see ``settled``), else None."""
        return self._owed.mark(key)

    def settled(self, key: str, mark: int | None) -> None:
        """A delete of ``key`` sent when its mark was ``mark`` landed."""
        if mark is not None:
            self._owed.settle([(key, mark)])

    def resume(self) -> None:
        """The tier took a command: send what is owed, if anything is."""
        if self._owed.active:
            self._resume()

    def _resume(self) -> None:
        self._owed_due = True
        if self._breaker.state == "open":  # it would be refused: try once it probes
            self._retry_later(0.0)
        else:
            self._start()

    def _retry_later(self, delay: float) -> None:
        """Try what is owed again in ``delay`` seconds, or once the breaker lets a probe
        through if that is later (a success meanwhile tries at once: ``resume()``)."""
        if self._retry is not None or self._closed:
            return
        delay = max(delay, self._breaker.cooling_for)
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.resume()

    def _tried(self, landed: bool) -> None:
        """A try of what is owed landed, or is to be made again later."""
        if landed:
            self._retry_delay = self.timeout
            self._owed_due = self._owed.active  # more than one batch was owed
        elif self._owed.active:
            self._retry_later(self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, _MAX_RETRY_DELAY)

    def _start(self) -> None:
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

    def discard(self, key: str) -> bool:
        """Forget ``key``'s queued write. False when one is being sent: a delete sent now
        could be overtaken by it, so the key is owed a delete instead, which the writer
        sends after that batch (never a wait here: it is bounded in the server's time, a
        wait on the wall clock gave up first on a busy loop, and no delete was sent)."""
        self._pending.pop(key, None)
        if key in self._writing:
            self.owe_delete(key)
            return False
        return True

    def discard_all(self) -> None:
        """Forget every queued write; the keys of the batch being sent, which could land
        after a clear made now, are owed a delete (sent after that batch)."""
        self._pending.clear()
        self._wake()
        for key, (value, _) in list(self._writing.items()):
            if value is not None:
                self.owe_delete(key)

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        while (writer := self._writer) is not None and not writer.done():
            # Shielded: a caller that gives up waiting must not cancel everyone's writes.
            await asyncio.shield(writer)

    async def close(self, grace: float) -> None:
        """Send what is queued, and what is owed, for at most ``grace`` seconds, then
        drop the rest (a warning says when deletes owed are among it)."""
        self._closed = True
        self._wake()
        self.resume()  # one last try
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
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
            # Counted before the writer is stopped: the batch it is sending is cut short
            # too (the log above counts it), and stopping it forgets that batch.
            self._dropped += len(self)
            writer, self._writer = self._writer, None
            if writer is not None and not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._pending.clear()
            if self._owed.active:
                logger.warning(
                    "limpet cache: %s at %s closed owing %s: other processes may serve "
                    "those entries until they expire",
                    self._kind,
                    self._where,
                    "a clear" if self._owed.clear_owed else f"{len(self._owed)} delete(s)",
                )

    async def _drain(self) -> None:
        pending, owed = self._pending, self._owed
        while pending or (self._owed_due and owed.active):
            taken: list[tuple[str, int]] = []
            batch: list[tuple[str, Write]] = []
            if self._owed_due and owed.active:
                self._owed_due = False
                if owed.clear_owed:
                    await self._clear_owed()
                    continue
                # Sent after every batch before: after any write of these keys.
                taken = owed.take(self._batch_size)
                batch = [(key, _DELETE) for key, _ in taken]
            room = self._batch_size - len(batch)
            batch += [pending.popitem(last=False) for _ in range(min(len(pending), room))]
            if not batch:
                continue
            self._writing = dict(batch)
            self._wake()  # room for as many as the batch took
            try:
                landed = await self._send(batch)
            finally:
                self._writing = {}
                self._wake()  # the breaker may have opened: nobody waits then
            if taken:
                if landed:
                    owed.settle(taken)
                self._tried(landed)

    async def _clear_owed(self) -> None:
        owed = self._owed
        upto = owed.begin_clear()
        landed = False
        try:
            await self._clear()
            landed = True
        except CacheUnavailableError as exc:
            self._fault(1, exc)
        finally:
            owed.end_clear(upto, landed=landed)
        self._tried(landed)

    def _wake(self) -> None:
        """Let the callers of ``wait_for_room()`` look again."""
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _send(self, batch: list[tuple[str, Write]]) -> bool:
        """Send ``batch``; whether all of it landed."""
        breaker = self._breaker
        if not breaker.allow():
            self._failed += len(batch)
            return False
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
            return False
        except Exception as exc:
            breaker.record_failure(epoch)
            self._failed += len(batch)
            self._fault(len(batch), exc)
            return False
        if outcome.answered:
            # The server answered, even if it refused some commands (out of memory): up.
            breaker.record_success(epoch)
        else:
            breaker.record_failure(epoch)
        refused = outcome.refused
        if refused:
            self._failed += len(refused)
            self._fault(len(refused), refused[0])
            return False
        if self._failing:
            self._failing = False
            logger.info("limpet cache: writes to %s at %s resumed", self._kind, self._where)
        return outcome.answered

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

"""Single-flight: one upstream call per key, however many callers miss at once."""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar, runtime_checkable

from limpet.config import FlightConfig
from limpet.errors import APIStatusError, CacheUnavailableError
from limpet.retry import should_retry

__all__ = [
    "FlightNotice",
    "FlightOutcome",
    "FlightStore",
    "FlightWatch",
    "RedisFlight",
    "SingleFlight",
]

logger = logging.getLogger("limpet.coalesce")

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Future[T]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Runs one call per key at a time; concurrent callers of a key share its result.

    The first caller of a key starts the call as a task of its own; every caller, the
    first included, awaits it through ``asyncio.shield``, so cancelling one caller never
    cancels the call the others wait on. An exception reaches every caller and is not
    remembered: the next call for the key starts afresh. When the last caller is gone,
    the flight is forgotten first (so a newcomer starts a fresh call rather than joining
    a dying one) and then, with ``cancel_orphans``, the call is cancelled.

    A failure that ``retry_if`` accepts (a retryable one) may promote one waiter to try
    once more: every waiter of the failed call may start a new one, and the first to do
    so leads it while the others join it. Each waiter does this at most ``promotions``
    times; the leader of the failed call gets its error.

    A caller bounds its own wait (``asyncio.timeout`` around ``do``): when it expires,
    that caller leaves and the call goes on for the others.

    Args:
        cancel_orphans: cancel a call nobody waits for any more; False lets it finish
            (and fill the cache) in the background.
        retry_if: which failures a waiter may retry; None: none.
        promotions: how often one waiter may retry.

    Example:
        >>> flight: SingleFlight[bytes] = SingleFlight()
        >>> body, led = await flight.do(key, lambda: fetch(key))
    """

    __slots__ = ("_flights", "_running", "cancel_orphans", "promotions", "retry_if")

    def __init__(
        self,
        *,
        cancel_orphans: bool = True,
        retry_if: Callable[[BaseException], bool] | None = None,
        promotions: int = 1,
    ) -> None:
        self._flights: dict[str, _Flight[T]] = {}
        # Every call not yet done, forgotten ones included (a cancelled orphan unwinding).
        self._running: set[asyncio.Future[T]] = set()
        self.cancel_orphans = cancel_orphans
        self.retry_if = retry_if
        self.promotions = promotions

    def __len__(self) -> int:
        """Keys in flight."""
        return len(self._flights)

    async def do(self, key: str, call: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of ``call()`` for ``key``, shared with concurrent callers.

        Returns:
            The result, and True for the caller whose ``call`` ran (the leader).
        """
        promotions = self.promotions if self.retry_if is not None else 0
        while True:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight(asyncio.ensure_future(call()))
                self._flights[key] = flight
                self._running.add(flight.task)
                # Added first, so it runs before any waiter wakes: a promoted waiter
                # never finds the failed flight still registered.
                flight.task.add_done_callback(partial(self._land, key, flight))
            flight.waiters += 1
            try:
                result = await asyncio.shield(flight.task)
            except asyncio.CancelledError:
                flight.waiters -= 1
                if flight.waiters == 0 and not flight.task.done():
                    self._forget(key, flight)
                    if self.cancel_orphans:
                        flight.task.cancel()
                raise
            except Exception as exc:
                flight.waiters -= 1
                if leader or promotions <= 0 or not (self.retry_if and self.retry_if(exc)):
                    raise
                promotions -= 1
                continue
            except BaseException:
                flight.waiters -= 1
                raise
            flight.waiters -= 1
            return result, leader

    async def aclose(self) -> None:
        """Cancel the calls still running and wait until they have unwound (their
        ``finally`` blocks release what they hold)."""
        # Not the forgotten ones: they were cancelled already, and a second cancellation
        # would interrupt their clean-up (a lease release, say).
        for flight in list(self._flights.values()):
            flight.task.cancel()
        running = list(self._running)
        if running:
            await asyncio.wait(running)

    def _land(self, key: str, flight: _Flight[T], task: asyncio.Future[T]) -> None:
        self._running.discard(task)
        self._forget(key, flight)
        # An orphaned call that failed has no one to tell; mark it seen so asyncio does not
        # log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    def _forget(self, key: str, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


#: Seconds the leader waits for its renewal task to stop before releasing the lease.
_RENEWAL_STOP_TIMEOUT = 1.0


class FlightOutcome(enum.Enum):
    """What a leader told its followers when it finished."""

    STORED = "stored"  # the entry is in the shared cache
    FAILED = "failed"  # a final error; followers raise it too
    ABANDONED = "abandoned"  # no entry and no final error: one follower should take over


@dataclass(frozen=True, slots=True)
class FlightNotice:
    outcome: FlightOutcome
    error: APIStatusError | None = None


class FlightWatch(Protocol):
    """A registration for one key's completion notice, made before re-checking the cache."""

    async def next(self) -> FlightNotice:
        """The next notice for the key; callers bound the wait with ``asyncio.timeout``."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class FlightStore(Protocol):
    """Shared leases and completion notices; every method may raise
    ``CacheUnavailableError``, and then flights fall back to this process alone."""

    async def acquire(self, key: str, token: str, lease: float) -> bool: ...

    async def renew(self, key: str, token: str, lease: float) -> bool: ...

    async def held(self, key: str) -> bool: ...

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        """Atomically: store ``entry`` (if any) for ``ttl``, drop the lease if ``token``
        still holds it, and publish ``notice``."""
        ...

    async def watch(self, key: str) -> FlightWatch: ...


R = TypeVar("R")


class _NoNotices:
    """A watch that never hears anything, so a follower relies on its polling."""

    async def next(self) -> FlightNotice:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable: the future above is never resolved")

    def close(self) -> None:
        pass


class RedisFlight(Generic[R]):
    """Single-flight across processes: one leader per key among every process sharing
    the store; the others wait for its entry.

    A caller first takes the key's lease (``SET NX PX`` with a random token). The leader
    renews it every ``lease / 3`` while its call runs, then stores the entry, drops the
    lease and publishes completion in one atomic step. A follower registers for the
    notice first, then re-checks the cache (so a completion between the two cannot be
    missed), then waits, checking every ``poll`` seconds whether the lease still exists:
    a lease that vanished without an entry means the leader died, and the follower takes
    over. A follower that waited ``follow_timeout`` calls upstream itself: correctness
    over savings. With the store unreachable, calls go upstream from each process.

    Use it behind ``SingleFlight``, so that one caller per process takes part.

    Args:
        store: the shared leases and notices (``RedisCache`` provides them).
        config: lease, poll and follower timeout.
    """

    __slots__ = ("config", "store")

    def __init__(self, store: FlightStore, config: FlightConfig | None = None) -> None:
        self.store = store
        self.config = config or FlightConfig()

    async def do(
        self,
        key: str,
        lead: Callable[[], Awaitable[tuple[R, bytes | None, float]]],
        read: Callable[[], Awaitable[R | None]],
    ) -> tuple[R, bool]:
        """The result for ``key``: from this process's ``lead()`` or another's entry.

        Args:
            lead: the upstream call; returns the result, the entry bytes to share (None:
                nothing to share) and their TTL.
            read: reads the key's entry from the shared cache.

        Returns:
            The result, and True when this process led.
        """
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self.config.follow_timeout
        while True:
            try:
                if await self.store.acquire(key, token, self.config.lease):
                    return await self._lead(key, token, lead), True
                found = await self._follow(key, read, deadline)
            except CacheUnavailableError:
                result, _, _ = await lead()
                return result, True
            if found is not None:
                return found, False
            if time.monotonic() >= deadline:
                result, _, _ = await lead()
                return result, True

    async def _follow(
        self, key: str, read: Callable[[], Awaitable[R | None]], deadline: float
    ) -> R | None:
        """The entry once the leader stores it, or None when the lease is gone without one
        (or the wait timed out) and this process should try to lead."""
        try:
            watch: FlightWatch = await self.store.watch(key)
        except CacheUnavailableError:
            watch = _NoNotices()  # no notices to be had (say, a cluster): poll alone
        try:
            while True:
                found = await read()
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                notice: FlightNotice | None = None
                try:
                    async with asyncio.timeout(min(self.config.poll, remaining)):
                        notice = await watch.next()
                except TimeoutError:
                    pass
                if notice is not None and notice.error is not None:
                    raise notice.error
                stored = notice is not None and notice.outcome is FlightOutcome.STORED
                if not stored and not await self.store.held(key):
                    # One last look: the leader may have stored it just now.
                    return await read()
        finally:
            watch.close()

    async def _lead(
        self,
        key: str,
        token: str,
        lead: Callable[[], Awaitable[tuple[R, bytes | None, float]]],
    ) -> R:
        renewing = asyncio.get_running_loop().create_task(self._renew(key, token))
        notice = FlightNotice(FlightOutcome.ABANDONED)
        entry: bytes | None = None
        ttl = 0.0
        try:
            result, entry, ttl = await lead()
            if entry is not None:
                notice = FlightNotice(FlightOutcome.STORED)
            return result
        except APIStatusError as exc:
            if not should_retry(exc):
                notice = FlightNotice(FlightOutcome.FAILED, exc)
            raise
        finally:
            renewing.cancel()
            # Bounded: a Redis client whose socket timeout wraps sends in wait_for can
            # swallow a cancellation on Python 3.11; the lease must be released anyway.
            await asyncio.wait({renewing}, timeout=_RENEWAL_STOP_TIMEOUT)
            try:
                await self.store.release(key, token, notice, entry, ttl)
            except CacheUnavailableError as exc:
                # Followers find the lease expired and take over; nothing is lost.
                logger.warning("limpet: could not release the flight for %s: %s", key, exc)

    async def _renew(self, key: str, token: str) -> None:
        """Keep the lease alive while the leader's call runs (LLM calls take minutes)."""
        while True:
            await asyncio.sleep(self.config.lease / 3)
            try:
                if not await self.store.renew(key, token, self.config.lease):
                    logger.warning("limpet: flight lease for %s was lost while leading", key)
                    return
            except CacheUnavailableError:
                continue

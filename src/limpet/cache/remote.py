"""What the remote tiers (``RedisCache``, ``MemcachedCache``) share: their settings and
the checks on them, the circuit breaker around every call, and the write queue.

A cache must never make a call slower than having no cache, so every remote operation is
bounded, in the server's time (``limpet.cache.budget``): reads by ``read_timeout``,
writes by ``write_timeout``, and a circuit breaker
stops calling a server that keeps failing, so an outage costs a few timeouts, not one per
call. The wait for one of this process's own pooled connections is not the server's time
(``limpet.cache.budget.queueing``). Writes never wait at all: ``set()`` queues the value
and a background writer sends it (``limpet.cache.writes.WriteQueue``); a caller with a
burst to store can wait for room in the queue (``wait_for_write_room()``) rather than
have it dropped. Every failure leaves as ``CacheUnavailableError`` with the client's error
as its ``__cause__``.

``RemoteCache`` is that behaviour once; a backend adds how it talks to its server: how a
call is timed (``_deadline``), what an error says about the server (``_verdict``), and
how a batch of writes goes out (the ``SendBatch`` it gives the queue).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from limpet._checks import check_hmac_key
from limpet.cache.breaker import BreakerState, CircuitBreaker
from limpet.cache.budget import QueueTimeout, Watchdog
from limpet.cache.writes import ClearAll, SendBatch, WriteQueue
from limpet.config import check_number
from limpet.errors import (
    CacheRejectedError,
    CacheTimeoutError,
    CacheUnavailableError,
    ConfigurationError,
)

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_PENDING_WRITES",
    "DEFAULT_PREFIX",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "RemoteCache",
    "RemoteSettings",
    "Verdict",
    "check_source",
    "remote_settings",
]

DEFAULT_PREFIX = "limpet:"
DEFAULT_READ_TIMEOUT = 0.050
DEFAULT_WRITE_TIMEOUT = 0.100
DEFAULT_MAX_PENDING_WRITES = 1_000
DEFAULT_CLOSE_TIMEOUT = 5.0

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteSettings:
    """The checked options every remote tier takes (see ``RedisCache`` for each)."""

    prefix: str
    read_timeout: float
    write_timeout: float
    close_timeout: float
    max_pending_writes: int
    max_connections: int
    hmac_key: bytes | None


def remote_settings(
    owner: str,
    *,
    prefix: str,
    read_timeout: float,
    write_timeout: float,
    close_timeout: float,
    max_pending_writes: int,
    max_connections: int,
    hmac_key: bytes | None,
    breaker: CircuitBreaker | None = None,
) -> RemoteSettings:
    """The settings of a remote tier named ``owner``, checked; the prefix is the
    backend's to check (each server has its own rules for keys). ``breaker`` is checked
    only (anything else would fail the first call that asks it).

    Raises:
        ConfigurationError: an option out of range, naming ``owner.option``.

    Example:
        >>> remote_settings("RedisCache", prefix="app:", read_timeout=0, write_timeout=0.1,
        ...     close_timeout=5, max_pending_writes=10, max_connections=8, hmac_key=None)
        Traceback (most recent call last):
        limpet.errors.ConfigurationError: RedisCache.read_timeout: expected a finite number > 0, got 0
    """  # noqa: E501
    for name, seconds in (
        ("read_timeout", read_timeout),
        ("write_timeout", write_timeout),
        ("close_timeout", close_timeout),
    ):
        check_number(f"{owner}.{name}", seconds, above=0)
    for name, count in (
        ("max_pending_writes", max_pending_writes),
        ("max_connections", max_connections),
    ):
        check_number(f"{owner}.{name}", count, integer=True)
    check_hmac_key(f"{owner}.hmac_key", hmac_key)
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigurationError(
            f"{owner}.breaker: expected a CircuitBreaker or None, got {type(breaker).__name__}"
        )
    return RemoteSettings(
        prefix=prefix,
        read_timeout=float(read_timeout),
        write_timeout=float(write_timeout),
        close_timeout=float(close_timeout),
        max_pending_writes=max_pending_writes,
        max_connections=max_connections,
        hmac_key=hmac_key,
    )


def check_source(owner: str, url: object, client: object) -> None:
    """A remote tier is built from a URL or lent a client, never both or neither.

    Raises:
        ConfigurationError: neither or both given, or a URL that is no str.
    """
    if (url is None) == (client is None):
        raise ConfigurationError(f"{owner}: pass exactly one of url= or client=")
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"{owner}.url: expected a str, got {type(url).__name__}")


class Verdict(enum.Enum):
    """What a failed call says about the server, hence what the breaker is told."""

    #: The server is down, unreachable or broken: a failure for the breaker.
    DOWN = "down"
    #: The server answered with an error (out of memory, too large): it is up.
    REFUSED = "refused"
    #: This process has no free connection: says nothing about the server.
    BUSY = "busy"
    #: The server did not answer in time (its client's own timeout): a failure for the
    #: breaker, raised as ``CacheTimeoutError`` (a stall, or a server gone quiet).
    SLOW = "slow"


class RemoteCache:
    """The shared half of a remote tier: breaker, write queue, lifecycle and counters.

    Writes are queued and sent by a background task: ``set()`` returns at once, a value
    queued but not yet written is already visible to ``get()`` in this process, at most
    ``max_pending_writes`` values wait (beyond that new writes are dropped and counted in
    ``dropped_writes``, unless the caller waited for ``write_room``, which a healthy tier
    always frees), and ``flush()`` waits until the queue is empty. Writes the
    server refused or that could not be sent are counted in ``failed_writes`` and logged
    once per outage; they never raise, since no caller is waiting for them.

    While the circuit breaker is open every operation raises ``CacheUnavailableError``
    at once, without touching the network; after its cool-down one operation probes.

    A delete not sent (the breaker open, the server failing, a write of the key on its
    way) and a clear not made leave the key (or the tier) owed a delete
    (``limpet.cache.owed_deletes``): it reads as a miss here, and the writer deletes it
    once the tier takes a command again (``pending_deletes``), so a forgotten answer is
    never served again from the tier.

    Subclasses set ``_kind`` (for messages: ``"redis"``), build their client and call
    ``super().__init__()``; they override ``_deadline`` and ``_verdict``.
    """

    __slots__ = (
        "_closed",
        "_watchdog",
        "_where",
        "_writes",
        "breaker",
        "close_timeout",
        "hmac_key",
        "prefix",
        "read_timeout",
        "write_timeout",
    )

    #: The backend's name in messages and task names.
    _kind: ClassVar[str]

    def __init__(
        self,
        settings: RemoteSettings,
        *,
        where: str,
        send: SendBatch,
        clear: ClearAll,
        batch_size: int,
        breaker: CircuitBreaker | None,
    ) -> None:
        """Take the checked settings, and start the breaker and the write queue.

        Args:
            settings: from ``remote_settings()``.
            where: the server(s), for messages (never credentials).
            send: sends a batch of writes the backend's way.
            clear: clears the tier the backend's way, through ``_guarded`` (a clear owed).
            batch_size: writes sent in one batch at most.
            breaker: the caller's breaker, or None for a new one.
        """
        self.prefix = settings.prefix
        self.read_timeout = settings.read_timeout
        self.write_timeout = settings.write_timeout
        self.close_timeout = settings.close_timeout
        #: Signs flight notices (see ``flight_store``); never in reprs or messages.
        self.hmac_key = settings.hmac_key
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        # Every call's budget, counted in the server's time, by one timer for them all
        # (in wall time while the breaker has a failure streak: the server is suspect).
        breaker = self.breaker
        self._watchdog = Watchdog(
            min(self.read_timeout, self.write_timeout),
            failing=lambda: breaker.failing,
            probing=lambda: breaker.state == "half_open",
        )
        self._where = where
        self._closed = False
        self._writes = WriteQueue(
            send,
            self.breaker,
            clear=clear,
            timeout=self.write_timeout,
            max_pending=settings.max_pending_writes,
            where=where,
            kind=self._kind,
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._where}, prefix={self.prefix!r}, "
            f"breaker={self.breaker.state!r}, pending_writes={self.pending_writes})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Send pending writes, then release connections. Idempotent."""
        raise NotImplementedError

    @property
    def server(self) -> str:
        """Where this cache's server is (host and port, or the socket), never a credential."""
        return self._where

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state: ``"closed"``, ``"open"`` or ``"half_open"``."""
        return self.breaker.state

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return len(self._writes)

    @property
    def pending_deletes(self) -> int:
        """Keys owed a delete the tier could not take yet (read as misses here until it
        lands); see ``limpet.cache.owed_deletes``."""
        return self._writes.owed_deletes

    @property
    def dropped_writes(self) -> int:
        """Writes given up: the queue was full, or ``aclose()`` ran out of time before
        they had landed (those it cut short on their way included)."""
        return self._writes.dropped

    @property
    def failed_writes(self) -> int:
        """Writes attempted that did not land: refused, or the server down or too slow."""
        return self._writes.failed

    @property
    def write_room(self) -> int | None:
        """Writes ``set()`` queues now without dropping any; None while no bound is worth
        waiting for (the breaker is not closed, or the cache is closed): writes beyond
        ``max_pending_writes`` are then dropped, as the tier is failing anyway."""
        return self._writes.room

    async def wait_for_write_room(self) -> None:
        """Wait, while the breaker is closed, until the write queue takes more writes
        (its writer has sent some); at once otherwise. A caller storing more than the
        queue holds feeds it in pieces this way, and loses nothing to a healthy tier.
        Bounded: each batch the writer sends takes at most ``write_timeout`` once it
        holds a connection, and waits for one at most twenty of them."""
        await self._writes.wait_for_room()

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        await self._writes.flush()

    def _queued(self, full: str) -> tuple[bool, bytes | None]:
        """Whether a write of the full key ``full`` is queued, and what it stores: this
        process already knows the answer, though the server has not seen it yet."""
        queued = self._writes.queued(full)
        if queued is None:
            return False, None
        value, expires_at = queued
        return True, value if expires_at > time.monotonic() else None

    def landed(self, full_key: str, value: bytes) -> None:
        """``value`` is stored under ``full_key`` (a flight's release wrote it with the
        lease): the same write still queued is dropped, uncounted. Each cross-process
        miss was written twice, and a burst of them filled the queue with duplicates."""
        self._writes.forget(full_key, value)

    def _check_writable(self) -> None:
        """No write is queued while the breaker is open (nor once the cache is closed).

        Raises:
            CacheUnavailableError: the breaker is open, or the cache closed.
        """
        self._check_open()
        if self.breaker.state == "open":
            raise CacheRejectedError(
                f"{self._kind} SET skipped: circuit breaker open ({self._where})"
            )

    async def _delete_now(self, full: str, send: Callable[[], Awaitable[object]]) -> None:
        """Delete the full key ``full`` with ``send`` (the backend's command, through the
        breaker), or owe its delete when that cannot be done now: a write of it is on its
        way (the writer deletes it after that), or ``send`` failed or was refused.

        Raises:
            CacheUnavailableError: ``send``'s, the key owed a delete.
        """
        writes = self._writes
        if not writes.discard(full):
            return
        mark = writes.owed_mark(full)
        try:
            await send()
        except BaseException:
            writes.owe_delete(full)
            raise
        writes.settled(full, mark)

    async def _clear_now(self, send: Callable[[], Awaitable[object]]) -> None:
        """Drop every queued write and clear the tier with ``send``, or owe the clear
        when that fails (made once the tier takes commands; empty here until then).

        Raises:
            CacheUnavailableError: ``send``'s, the clear owed.
        """
        self._writes.discard_all()
        try:
            await send()
        except BaseException:
            self._writes.owe_clear()
            raise

    async def _close_writes(self) -> bool:
        """Mark the cache closed and send pending writes for at most ``close_timeout``.
        False when it was closed already."""
        if self._closed:
            return False
        self._closed = True
        await self._writes.close(self.close_timeout)
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise CacheRejectedError(f"{type(self).__name__} for {self._where} is closed")

    def _deadline(self, budget: float) -> AbstractAsyncContextManager[object]:
        """Bounds one call to ``budget`` seconds of the server's time
        (``limpet.cache.budget``)."""
        return self._watchdog.bound(budget)

    def _verdict(self, exc: Exception) -> Verdict:
        """What ``exc``, raised by a call, says about the server."""
        return Verdict.DOWN

    async def _guarded(
        self, command: str, budget: float, call: Callable[[], Awaitable[_T]], *, gated: bool
    ) -> _T:
        """Run ``call`` under the breaker within ``budget``: the one boundary to the
        server (see the backends' ``run()``), where every error becomes
        ``CacheUnavailableError``: a ``CacheRejectedError`` when the command certainly did
        not take effect (not sent, or refused by the server), so that a caller can tell a
        lease that is nobody's from one that may have landed."""
        self._check_open()
        breaker, kind, where = self.breaker, self._kind, self._where
        if gated and not breaker.allow():
            raise CacheRejectedError(f"{kind} {command} skipped: circuit breaker open ({where})")
        epoch = breaker.epoch
        try:
            async with self._deadline(budget):
                result = await call()
        except QueueTimeout as exc:
            # No connection of this process's own came free in time: nothing was sent,
            # and the server is not to blame.
            breaker.release(epoch)
            raise CacheRejectedError(
                f"{kind} {command}: no free connection in this process ({where})"
            ) from exc
        except TimeoutError as exc:
            breaker.record_failure(epoch)
            raise CacheTimeoutError(
                f"{kind} {command} timed out after {budget * 1000:.0f} ms ({where})"
            ) from exc
        except Exception as exc:
            verdict = self._verdict(exc)
            if verdict is Verdict.BUSY:
                breaker.release(epoch)
                raise CacheRejectedError(f"{kind} {command}: no free connection ({where})") from exc
            if verdict is Verdict.SLOW:
                breaker.record_failure(epoch)
                raise CacheTimeoutError(f"{kind} {command} timed out ({where}): {exc}") from exc
            if verdict is Verdict.REFUSED:
                # The server answered: this must not open the breaker and turn a refused
                # write into an outage for reads too.
                breaker.record_success(epoch)
                raise CacheRejectedError(f"{kind} {command} refused ({where}): {exc}") from exc
            breaker.record_failure(epoch)
            raise CacheUnavailableError(f"{kind} {command} failed ({where}): {exc}") from exc
        except BaseException:
            # Cancelled by our caller: says nothing about the server.
            breaker.release(epoch)
            raise
        breaker.record_success(epoch)
        if self._writes.owing:  # the tier takes commands: the deletes owed to it go
            self._writes.resume()
        return result

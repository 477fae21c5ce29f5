"""The Memcached backend: bytes under prefixed keys with Memcached TTLs, on ``emcache``.

The client is ``emcache``, chosen over ``aiomcache`` on purpose: it spreads keys over
several servers with rendezvous hashing (``aiomcache`` talks to one), is maintained, is
asyncio-native, sends values length-prefixed (binary-safe) and has ``add``, ``incr``,
``touch`` and ``flush_all``. Its C parser ships as wheels. And it closes a connection
whose command was cancelled, where ``aiomcache`` returns it to its pool with the reply
still unread, so the next command on it would read the previous one's answer. limpet
never cancels a command while its connection is open, though: a budget that runs out
(50 ms on every read) ends its caller's wait, and the command reads its reply in the
background (``connection`` says why, and handles emcache's reconnection backoff).

Graceful fall-through is every remote tier's (``limpet.cache.remote``): every operation
is bounded (``read_timeout``, ``write_timeout``), one circuit breaker covers every server,
writes are queued and sent in the background, and every failure leaves as
``CacheUnavailableError``. What is Memcached's own:

- Keys: Memcached keys are at most 250 bytes of printable ASCII without spaces, so a key
  that is not (and any key starting with ``~``) is stored under the SHA-256 of it.
- TTLs are whole seconds (rounded up; Memcached's clock ticks in seconds, so an entry may
  go up to a second early), and a TTL over 30 days is sent as an absolute unix time
  (Memcached reads larger numbers as timestamps); an infinite TTL never expires.
- An entry evicted by Memcached's LRU is a miss, not a fault. A value over the item size
  limit (``max_value_size``, 1 MiB by default like Memcached's ``-I``) is served but not
  sent, and counted in ``oversized_writes``.
- ``clear()`` is ``flush_all`` on every server: Memcached cannot list keys.
- Generations (``invalidate()``) are counters created with ``add`` and bumped with
  ``incr``; see ``limpet.cache.counter_starts.CounterStarts`` for what an evicted counter
  does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import emcache

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.capabilities import TierCapabilities
from limpet.cache.memcached.commands import StuckCommandError
from limpet.cache.memcached.connection import MemcachedConnector
from limpet.cache.memcached.generations import GenerationCounters
from limpet.cache.memcached.items import delete_key, get_value, get_values, write_item
from limpet.cache.memcached.keys import (
    RELATIVE_TTL_LIMIT,
    check_prefix,
    memcached_expiry,
    parse_memcached_url,
    safe_key,
)
from limpet.cache.memcached.servers import flush_all_servers, read_server_stats
from limpet.cache.memcached.writes import WRITE_BATCH, concurrent_writes
from limpet.cache.reads import ReadBatcher
from limpet.cache.remote import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_PENDING_WRITES,
    DEFAULT_PREFIX,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    RemoteCache,
    Verdict,
    remote_settings,
)
from limpet.config import check_number

if TYPE_CHECKING:
    from limpet.cache.memcached.leases import MemcachedFlightStore

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "DEFAULT_MEMCACHED_MAX_CONNECTIONS",
    "DEFAULT_PREFIX",
    "RELATIVE_TTL_LIMIT",
    "MemcachedCache",
    "memcached_expiry",
    "parse_memcached_url",
]

#: Connections per server of the client a ``MemcachedCache`` builds from a URL.
DEFAULT_MEMCACHED_MAX_CONNECTIONS = 32
#: Memcached's default item size limit (``-I 1m``), less room for the key and header.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024 - 1024

_T = TypeVar("_T")


class MemcachedCache(RemoteCache):
    """A ``CacheBackend`` on Memcached: ``MemcachedCache.from_url("memcached://cache:11211")``.

    Several servers (``memcached://a:11211,b:11211``) share the keys by rendezvous
    hashing, so adding one moves only its share; one that stays unreachable (three failed
    reconnections) leaves the hashing until it is back. One circuit breaker covers them
    all. Construction never touches the network;
    the first operation connects. Writes are queued and sent in the background exactly as
    ``RedisCache`` does (``pending_writes``, ``dropped_writes``, ``failed_writes``,
    ``flush()``), and an open circuit breaker makes every operation fail at once.

    Ownership: a cache built from a URL owns its ``emcache`` client and ``aclose()``
    closes it. A ``client`` you pass in is lent: ``aclose()`` flushes pending writes but
    leaves it open, and it keeps its own reconnection backoff.

    Args:
        url: ``memcached://host:11211[,host2:11211...]``.
        client: an ``emcache.Client`` to use instead of a URL (not closed by us). Give it
            ``timeout=None``: the per-operation budgets here bound every call.
        prefix: prepended to every key; printable ASCII without spaces, at most 100 chars.
        read_timeout: seconds a read may take, connecting included.
        write_timeout: seconds a write (a batch of sets, a delete, an incr) may take.
        max_pending_writes: queued writes beyond which new writes are dropped.
        max_connections: connections per server for a client built from ``url``.
        max_value_size: bytes above which a value is not sent (Memcached would refuse it).
        close_timeout: seconds ``aclose()`` waits for pending writes before dropping them.
        breaker: the circuit breaker; pass one to tune it or to inject a clock.
        hmac_key: signs cross-process flight notices (HMAC-SHA256), so a follower
            trusts a leader's final error; without it a notice's error is never raised
            (see ``RedisFlight``). A ``TieredCache``'s ``hmac_key`` is used when not given;
            a ``TieredCache`` given none signs its entries with this one.

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL,
            or an out-of-range option.

    Example:
        >>> cache = TieredCache(MemoryCache(), MemcachedCache.from_url("memcached://mc:11211"))
    """

    __slots__ = ("_connector", "_counters", "_flights", "_oversized", "_reads", "max_value_size")

    capabilities: ClassVar[TierCapabilities] = TierCapabilities(
        shared=True, generations=True, leases=True, breaker=True
    )
    _kind: ClassVar[str] = "memcached"

    def __init__(
        self,
        *,
        url: str | None = None,
        client: emcache.Client | None = None,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MEMCACHED_MAX_CONNECTIONS,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> None:
        check_prefix(prefix)
        settings = remote_settings(
            "MemcachedCache",
            prefix=prefix,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            close_timeout=close_timeout,
            max_pending_writes=max_pending_writes,
            max_connections=max_connections,
            hmac_key=hmac_key,
            breaker=breaker,
        )
        check_number("MemcachedCache.max_value_size", max_value_size, integer=True)
        self._connector = MemcachedConnector(url, client, max_connections=max_connections)
        self.max_value_size = max_value_size
        self._oversized = 0
        super().__init__(
            settings,
            where=self._connector.where,
            send=concurrent_writes(self._send_write, self._connector.slots),
            clear=self._flush_all,
            batch_size=WRITE_BATCH,
            breaker=breaker,
        )
        self._counters = GenerationCounters(self)
        self._flights: MemcachedFlightStore | None = None
        # Batched with the reads of concurrent callers: a burst is a few multi-key gets,
        # not one get (and one pooled connection, one task) per caller.
        self._reads = ReadBatcher(self._get_one, self._get_many, kind="Memcached")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MEMCACHED_MAX_CONNECTIONS,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> MemcachedCache:
        """A cache that owns an ``emcache`` client to the servers of ``url``; see the
        class for the options.

        Example:
            >>> cache = MemcachedCache.from_url("memcached://10.0.0.5:11211,10.0.0.6:11211")
        """
        return cls(
            url=url,
            prefix=prefix,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_pending_writes=max_pending_writes,
            max_connections=max_connections,
            max_value_size=max_value_size,
            close_timeout=close_timeout,
            breaker=breaker,
            hmac_key=hmac_key,
        )

    @property
    def max_connections(self) -> int:
        """Connections per server of a client built from ``url``."""
        return self._connector.max_connections

    @property
    def flight_store(self) -> MemcachedFlightStore:
        """Leases for cross-process single-flight on these servers (closed with the cache)."""
        if self._flights is None:
            from limpet.cache.memcached.leases import MemcachedFlightStore

            self._flights = MemcachedFlightStore(self)
        return self._flights

    def entry_key(self, key: str) -> bytes:
        """The Memcached key of entry ``key``: ``prefix + "e:" + key`` (hashed when unfit)."""
        return safe_key(self.prefix, "e:", key)

    def lock_key(self, key: str) -> bytes:
        """The Memcached key of ``key``'s single-flight lease."""
        return safe_key(self.prefix, "l:", key)

    def notice_key(self, key: str) -> bytes:
        """The Memcached key of the last completion notice of ``key``'s flights."""
        return safe_key(self.prefix, "n:", key)

    def generation_key(self, name: str) -> bytes:
        """The Memcached key of generation counter ``name``."""
        return safe_key(self.prefix, "g:", name)

    @property
    def oversized_writes(self) -> int:
        """Values not sent because they exceed ``max_value_size`` (served, never stored)."""
        return self._oversized

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None (absent, expired or evicted).

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        full = safe_key(self.prefix, "e:", key).decode()
        queued, value = self._queued(full)
        if queued:
            return value
        self._check_open()
        return await self._reads.get(full)

    def _get_one(self, full: str) -> Awaitable[bytes | None]:
        return self.run("get", self.read_timeout, partial(get_value, key=full.encode()))

    def _get_many(self, keys: Sequence[str]) -> Awaitable[list[bytes | None]]:
        raw = [key.encode() for key in keys]
        return self.run("get_many", self.read_timeout, partial(get_values, keys=raw))

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Queue ``value`` under ``key`` for ``ttl`` seconds and return without waiting.

        A ``ttl`` of 0 or less removes the key instead; a value over ``max_value_size``
        is counted in ``oversized_writes`` and any older value of the key removed.

        Raises:
            CacheUnavailableError: the breaker is open (no write is queued), or closed.
        """
        self._check_writable()
        if len(value) > self.max_value_size:
            self._oversized += 1
            ttl = 0.0  # a stale older value must not stay in its place
        self._writes.put(self.entry_key(key).decode(), value, ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still queued. A delete that cannot be made
        now (the breaker open, Memcached failing, a write of the key on its way, which
        could land after it) is owed: sent once Memcached takes commands, a miss here
        until then.

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed
                (the delete owed, but when closed).
        """
        self._check_open()
        full = self.entry_key(key)
        try:
            await self._delete_now(
                full.decode(),
                partial(self.run, "delete", self.write_timeout, partial(delete_key, key=full)),
            )
        finally:
            self._reads.forget(full.decode())  # a read sent before the delete

    async def clear(self) -> None:
        """Empty every server (``flush_all``): Memcached cannot list keys, so this removes
        other applications' items on the same servers too. An admin operation; to drop
        limpet's entries alone, invalidate (``Client.invalidate()``, ``limpet flush``).

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        try:
            await self._clear_now(self._flush_all)
        finally:
            self._reads.forget()

    def _flush_all(self) -> Awaitable[None]:
        return self.run("flush_all", self.write_timeout, flush_all_servers)

    async def generations(self, names: Sequence[str]) -> list[int]:
        """The current value of each generation counter. A missing one (never bumped,
        evicted, lost in a restart) is created above every value it had, so an eviction
        never revives invalidated entries (see ``limpet.cache.counter_starts.CounterStarts``).

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        if not names:
            return []
        self._check_open()
        return await self._counters.read(names)

    async def bump_generation(self, name: str) -> int:
        """Add one to generation ``name`` (``incr``; the counter is created if missing).

        Returns:
            The new generation.

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        return await self._counters.bump(name)

    async def server_stats(self) -> dict[str, dict[str, float]]:
        """Each server's own counters (``stats``), by ``host:port``: ``items``, ``hits``,
        ``misses``, ``hit_rate``, ``evictions``, ``bytes`` and ``limit_bytes``. They count
        every client of the server, not limpet alone (Memcached keeps no per-prefix
        counts).

        Raises:
            CacheUnavailableError: a server is down, slow, the breaker is open, or closed.
        """

        return await self.run("stats", self.write_timeout, read_server_stats)

    async def aclose(self) -> None:
        """Send pending writes (for at most ``close_timeout``), give commands still
        running a write budget more to read their reply (within ``close_timeout`` too),
        then close the client if this cache owns it and cancel the commands left (see
        ``MemcachedConnector.aclose``). Idempotent; later operations raise
        ``CacheUnavailableError``."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.close_timeout
        try:
            await self._close_writes()
        finally:
            self._flights = None
            await self._reads.aclose()
            grace = min(self.write_timeout, deadline - loop.time())
            await self._connector.aclose(max(grace, 0.0))

    def run(
        self,
        command: str,
        budget: float,
        call: Callable[[emcache.Client], Awaitable[_T]],
        *,
        gated: bool = True,
    ) -> Coroutine[Any, Any, _T]:
        """Run one Memcached call under this cache's breaker, within ``budget`` seconds:
        the one boundary to Memcached, shared by the flight store.

        The budget bounds the caller's wait, not the command: a Memcached command is
        never cancelled while its connection is open (``limpet.cache.memcached.connection``
        says why). A caller whose budget runs out, or who is cancelled, leaves at once;
        the command goes on in its task until it has read its reply, and its connection
        goes back to the pool in step.

        Args:
            command: a name for messages, e.g. ``"get"``.
            budget: seconds the call may take, connecting included.
            call: makes the call with the ``emcache`` client.
            gated: False lets the call through an open breaker (its verdict still
                counts): a flight's lease must be renewed and released whatever the
                breaker thinks.

        Raises:
            CacheUnavailableError: the breaker is open, the cache is closed, the call timed
                out or failed, or Memcached refused it (which does not count against the
                breaker: Memcached is up).
        """
        probing = self.breaker.state == "half_open"
        start = partial(self._connector.run, call, probing=probing, budget=budget)
        return self._guarded(command, budget, start, gated=gated)

    def _verdict(self, exc: Exception) -> Verdict:
        # Memcached refused the command (too large, out of memory): it is up.
        if isinstance(exc, emcache.CommandError):
            return Verdict.REFUSED
        return Verdict.SLOW if isinstance(exc, StuckCommandError) else Verdict.DOWN

    def _send_write(
        self, key: str, value: bytes | None, expires_at: float
    ) -> asyncio.Future[Exception | None]:
        """One queued write, run as every command is, on a place its batch holds: a batch
        that runs out of time stops waiting for it, and it goes on until its reply is read."""
        return self._connector.start(
            partial(write_item, key=key.encode(), value=value, expires_at=expires_at),
            probing=False,
            budget=self.write_timeout,
            held=True,
        )

"""The Memcached backend: bytes under prefixed keys with Memcached TTLs, on ``emcache``.

The client is ``emcache``, chosen over ``aiomcache`` on purpose: it spreads keys over
several servers with rendezvous hashing (``aiomcache`` talks to one), is maintained, is
asyncio-native, sends values length-prefixed (binary-safe) and has ``add``, ``incr``,
``touch`` and ``flush_all``. Its C parser ships as wheels. And it closes a connection
whose command was cancelled, where ``aiomcache`` returns it to its pool with the reply
still unread, so the next command on it would read the previous one's answer: with a
50 ms budget on every read, cancellation is routine here. One quirk is handled below: it
reconnects to a server that was down with a backoff of its own (1 s doubling to 60 s), so
a client this cache owns is rebuilt whenever the circuit breaker lets a probe through, and
recovery follows the breaker, not that backoff.

Graceful fall-through is Redis's (``limpet.cache.redis.backend``): every operation is bounded
(``read_timeout``, ``write_timeout``), one circuit breaker covers every server, writes
are queued and sent in the background, and every failure leaves as
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
  ``incr``; see ``memcached_generations`` for what an evicted counter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import emcache

from limpet.cache.breaker import BreakerState, CircuitBreaker
from limpet.cache.memcached.generations import GenerationCounters
from limpet.cache.memcached.keys import (
    RELATIVE_TTL_LIMIT,
    check_prefix,
    memcached_expiry,
    parse_memcached_url,
    safe_key,
)
from limpet.cache.memcached.writes import WRITE_BATCH, concurrent_writes
from limpet.cache.writes import WriteQueue
from limpet.errors import CacheUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from limpet.cache.memcached.leases import MemcachedFlightStore

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "DEFAULT_PREFIX",
    "RELATIVE_TTL_LIMIT",
    "MemcachedCache",
    "memcached_expiry",
    "parse_memcached_url",
]

DEFAULT_PREFIX = "limpet:"
DEFAULT_READ_TIMEOUT = 0.050
DEFAULT_WRITE_TIMEOUT = 0.100
DEFAULT_MAX_PENDING_WRITES = 1_000
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Memcached's default item size limit (``-I 1m``), less room for the key and header.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024 - 1024

#: Seconds emcache may take to open a connection (in the background; see _connect).
_CONNECT_TIMEOUT = 2.0

_T = TypeVar("_T")


class MemcachedCache:
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
            (see ``RedisFlight``). A ``TieredCache``'s ``hmac_key`` is used when not given.

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL,
            or an out-of-range option.

    Example:
        >>> cache = TieredCache(MemoryCache(), MemcachedCache.from_url("memcached://mc:11211"))
    """

    __slots__ = (
        "_client",
        "_closed",
        "_connecting",
        "_counters",
        "_flights",
        "_old_clients",
        "_oversized",
        "_owns_client",
        "_servers",
        "_where",
        "_writes",
        "breaker",
        "close_timeout",
        "hmac_key",
        "max_connections",
        "max_value_size",
        "prefix",
        "read_timeout",
        "write_timeout",
    )

    def __init__(
        self,
        *,
        url: str | None = None,
        client: emcache.Client | None = None,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> None:
        check_prefix(prefix)
        if hmac_key is not None and (not isinstance(hmac_key, bytes) or not hmac_key):
            raise ConfigurationError("MemcachedCache.hmac_key: expected non-empty bytes or None")
        for name, seconds in (
            ("read_timeout", read_timeout),
            ("write_timeout", write_timeout),
            ("close_timeout", close_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ConfigurationError(
                    f"MemcachedCache.{name}: expected seconds > 0, got {seconds!r}"
                )
        for name, count in (
            ("max_pending_writes", max_pending_writes),
            ("max_connections", max_connections),
            ("max_value_size", max_value_size),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(
                    f"MemcachedCache.{name}: expected an int >= 1, got {count!r}"
                )
        if (url is None) == (client is None):
            raise ConfigurationError("MemcachedCache: pass exactly one of url= or client=")
        if client is not None and not isinstance(client, emcache.Client):
            raise ConfigurationError(
                f"MemcachedCache.client: expected an emcache.Client, got {type(client).__name__}"
            )
        self._servers = [] if url is None else parse_memcached_url(url)
        self._where = ",".join(f"{h}:{p}" for h, p in self._servers) or "lent emcache client"
        self._client = client
        self._owns_client = client is None
        self._connecting: asyncio.Lock | None = None
        self._old_clients: set[asyncio.Task[None]] = set()
        self.prefix = prefix
        self.read_timeout = float(read_timeout)
        self.write_timeout = float(write_timeout)
        self.close_timeout = float(close_timeout)
        self.max_connections = max_connections
        self.max_value_size = max_value_size
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        #: Signs flight notices (see ``flight_store``); never in reprs or messages.
        self.hmac_key = hmac_key
        self._closed = False
        self._oversized = 0
        self._counters = GenerationCounters(self)
        self._writes = WriteQueue(
            concurrent_writes(self._send_write),
            self.breaker,
            timeout=self.write_timeout,
            max_pending=max_pending_writes,
            where=self._where,
            kind="memcached",
            batch_size=WRITE_BATCH,
        )
        self._flights: MemcachedFlightStore | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
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

    def __repr__(self) -> str:
        return (
            f"MemcachedCache({self._where}, prefix={self.prefix!r}, "
            f"breaker={self.breaker.state!r}, pending_writes={self.pending_writes})"
        )

    async def __aenter__(self) -> MemcachedCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state: ``"closed"``, ``"open"`` or ``"half_open"``."""
        return self.breaker.state

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return len(self._writes)

    @property
    def server(self) -> str:
        """Which servers this cache uses (``host:port,...``), never a credential."""
        return self._where

    @property
    def dropped_writes(self) -> int:
        """Writes never attempted: the queue was full, or ``aclose()`` ran out of time."""
        return self._writes.dropped

    @property
    def failed_writes(self) -> int:
        """Writes attempted that did not land: refused, or the servers down or too slow."""
        return self._writes.failed

    @property
    def oversized_writes(self) -> int:
        """Values not sent because they exceed ``max_value_size`` (served, never stored)."""
        return self._oversized

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None (absent, expired or evicted).

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        full = safe_key(self.prefix, "e:", key)
        queued = self._writes.queued(full.decode())
        if queued is not None:
            value, expires_at = queued
            return value if expires_at > time.monotonic() else None
        item = await self.run("get", self.read_timeout, lambda c: c.get(full))
        return None if item is None else bytes(item.value)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Queue ``value`` under ``key`` for ``ttl`` seconds and return without waiting.

        A ``ttl`` of 0 or less removes the key instead; a value over ``max_value_size``
        is counted in ``oversized_writes`` and any older value of the key removed.

        Raises:
            CacheUnavailableError: the breaker is open (no write is queued), or closed.
        """
        self._check_open()
        if self.breaker.state == "open":
            raise CacheUnavailableError(
                f"memcached set skipped: circuit breaker open ({self._where})"
            )
        if len(value) > self.max_value_size:
            self._oversized += 1
            ttl = 0.0  # a stale older value must not stay in its place
        self._writes.put(self.entry_key(key).decode(), value, ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still queued.

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        full = self.entry_key(key)
        await self._writes.discard(full.decode())
        await self.run("delete", self.write_timeout, lambda c: _delete(c, full))

    async def clear(self) -> None:
        """Empty every server (``flush_all``): Memcached cannot list keys, so this removes
        other applications' items on the same servers too. An admin operation; to drop
        limpet's entries alone, invalidate (``Client.invalidate()``, ``limpet flush``).

        Raises:
            CacheUnavailableError: Memcached is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        await self._writes.discard_all()

        async def flush_all(client: emcache.Client) -> None:
            nodes = client.cluster_managment().nodes()
            await asyncio.gather(*(client.flush_all(node) for node in nodes))

        await self.run("flush_all", self.write_timeout, flush_all)

    async def generations(self, names: Sequence[str]) -> list[int]:
        """The current value of each generation counter. A missing one (never bumped,
        evicted, lost in a restart) is created above every value it had, so an eviction
        never revives invalidated entries (see ``memcached_generations``).

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

        async def read(client: emcache.Client) -> dict[str, dict[str, float]]:
            nodes = [
                node
                for node in client.cluster_managment().nodes()
                if isinstance(node, emcache.MemcachedHostAddress)
            ]
            replies = await asyncio.gather(*(client.stats(node) for node in nodes))
            return {
                f"{node.address}:{node.port}": _summary(reply)
                for node, reply in zip(nodes, replies, strict=True)
            }

        return await self.run("stats", self.write_timeout, read)

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        await self._writes.flush()

    async def aclose(self) -> None:
        """Send pending writes (for at most ``close_timeout``), then close the client if
        this cache owns it. Idempotent; later operations raise ``CacheUnavailableError``."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writes.close(self.close_timeout)
        finally:
            self._flights = None
            client, self._client = self._client, None
            if self._owns_client and client is not None:
                await client.close()
            await asyncio.gather(*self._old_clients, return_exceptions=True)

    async def run(
        self,
        command: str,
        budget: float,
        call: Callable[[emcache.Client], Awaitable[_T]],
        *,
        gated: bool = True,
    ) -> _T:
        """Run one Memcached call under this cache's breaker, within ``budget`` seconds.

        The one boundary to Memcached, shared by the flight store.

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
        self._check_open()
        breaker = self.breaker
        probing = breaker.state == "half_open"
        if gated and not breaker.allow():
            raise CacheUnavailableError(
                f"memcached {command} skipped: circuit breaker open ({self._where})"
            )
        epoch = breaker.epoch
        try:
            async with asyncio.timeout(budget):
                client = self._client
                if client is None or probing:
                    client = await self._connect(fresh=probing)
                result = await call(client)
        except TimeoutError as exc:
            breaker.record_failure(epoch)
            raise CacheUnavailableError(
                f"memcached {command} timed out after {budget * 1000:.0f} ms ({self._where})"
            ) from exc
        except emcache.CommandError as exc:
            breaker.record_success(epoch)
            raise CacheUnavailableError(
                f"memcached {command} refused ({self._where}): {exc}"
            ) from exc
        except Exception as exc:
            breaker.record_failure(epoch)
            raise CacheUnavailableError(
                f"memcached {command} failed ({self._where}): {exc}"
            ) from exc
        except BaseException:
            breaker.release(epoch)
            raise
        breaker.record_success(epoch)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise CacheUnavailableError(f"MemcachedCache for {self._where} is closed")

    async def _connect(self, *, fresh: bool) -> emcache.Client:
        """The client; one this cache owns is built on first use, and rebuilt for a
        breaker's probe so that reconnecting follows the breaker, not emcache's backoff."""
        client = self._client
        if client is not None and not (fresh and self._owns_client):
            return client
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client is not client:
                return self._client  # another caller just built one
            if client is not None:
                self._retire(client)
            self._client = await emcache.create_client(
                [emcache.MemcachedHostAddress(host, port) for host, port in self._servers],
                timeout=None,  # every call runs under this cache's own budget
                max_connections=self.max_connections,
                # One connection kept open: one a timeout closed is replaced at once,
                # in the background, rather than by the next call within its budget.
                min_connections=1,
                # Generous: emcache connects in the background, callers never wait past
                # their own budget, and a connection abandoned as slow is retried only
                # after a one-second backoff: a busy machine must not turn a slow
                # connect into a second of misses.
                connection_timeout=_CONNECT_TIMEOUT,
                # With several servers, one that stays unreachable leaves the hashing
                # (its keys go to the others) instead of timing out its share of calls.
                purge_unhealthy_nodes=len(self._servers) > 1,
            )
            return self._client

    def _retire(self, client: emcache.Client) -> None:
        task = asyncio.get_running_loop().create_task(client.close())
        self._old_clients.add(task)
        task.add_done_callback(self._old_clients.discard)

    async def _send_write(
        self, key: str, value: bytes | None, expires_at: float
    ) -> Exception | None:
        client = await self._connect(fresh=False)
        ttl = expires_at - time.monotonic()
        try:
            if value is None or ttl <= 0:
                await _delete(client, key.encode())
            else:
                exptime = memcached_expiry(ttl, time.time())
                await client.set(key.encode(), value, exptime=exptime)
        except emcache.CommandError as exc:
            return exc  # Memcached refused it (too large, out of memory): it is up
        return None


def _summary(reply: dict[str, str]) -> dict[str, float]:
    hits, misses = int(reply.get("get_hits", 0)), int(reply.get("get_misses", 0))
    return {
        "items": int(reply.get("curr_items", 0)),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "evictions": int(reply.get("evictions", 0)),
        "bytes": int(reply.get("bytes", 0)),
        "limit_bytes": int(reply.get("limit_maxbytes", 0)),
    }


async def _delete(client: emcache.Client, key: bytes) -> None:
    with contextlib.suppress(emcache.NotFoundCommandError):
        await client.delete(key)

"""The Redis backend: bytes under prefixed keys with Redis-native TTLs, on ``redis.asyncio``.

A cache must never make a call slower than having no cache, so every operation here is
bounded: reads by ``read_timeout`` (50 ms), writes by ``write_timeout`` (100 ms), and a
circuit breaker stops calling a Redis that keeps failing, so an outage costs three
timeouts, not one per call. Writes never wait at all: ``set()`` queues the value and a
background writer sends it (``limpet.cache.writes.WriteQueue``).

The same cache runs on one server or on a Redis Cluster. On a cluster every key carries
a hash tag, so that each operation stays on one slot: an entry and its flight lease
(which one Lua script touches) share the cache key as their tag, and every generation
counter shares the tag ``{gen}`` (read together in one MGET).

Every failure leaves as ``CacheUnavailableError`` (with the redis-py or OS error as its
``__cause__``); falling through to another tier is ``TieredCache``'s job, not this one's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, RedisClusterException

from limpet.cache.breaker import BreakerState, CircuitBreaker
from limpet.cache.redis.leases import RedisFlightStore
from limpet.cache.redis.reads import ReadBatcher, server_deadline
from limpet.cache.redis.writes import WRITE_BATCH, RedisClient, pipelined_writes, redis_replied
from limpet.cache.writes import WriteQueue
from limpet.errors import CacheUnavailableError, ConfigurationError

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING_WRITES",
    "DEFAULT_PREFIX",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "RedisCache",
    "RedisClient",
]

DEFAULT_PREFIX = "limpet:"
DEFAULT_READ_TIMEOUT = 0.050
DEFAULT_WRITE_TIMEOUT = 0.100
DEFAULT_MAX_PENDING_WRITES = 1_000
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_CLOSE_TIMEOUT = 5.0

#: URL schemes that mean a Redis Cluster: ``redis+cluster://host:port`` is a seed node.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# SCAN hint for clear(): large enough to be quick, small enough to keep each step short.
_SCAN_COUNT = 1_000

# Seconds redis-py may take to open a connection (see where it is used).
_MIN_CONNECT_TIMEOUT = DEFAULT_CLOSE_TIMEOUT

_T = TypeVar("_T")


class RedisCache:
    """A ``CacheBackend`` on Redis: ``RedisCache.from_url("redis://localhost:6379/0")``.

    Construction never touches the network; the first operation connects. Keys are
    written under ``prefix``, so ``clear()`` removes limpet's keys and nothing else.

    Writes are queued and sent by a background task: ``set()`` returns at once, a value
    queued but not yet written is already visible to ``get()`` in this process, at most
    ``max_pending_writes`` values wait (beyond that new writes are dropped and counted in
    ``dropped_writes``), and ``flush()`` waits until the queue is empty. Writes Redis
    refused or that could not be sent are counted in ``failed_writes`` and logged once
    per outage; they never raise, since no caller is waiting for them.

    While the circuit breaker is open every operation raises ``CacheUnavailableError``
    at once, without touching the network; after its cool-down one operation probes.

    **Redis Cluster**: ``RedisCache.from_url("redis+cluster://node:6379")`` (or
    ``cluster=True`` with a ``redis://`` URL, or a ``redis.asyncio.cluster.RedisCluster``
    as ``client``). The URL names one seed node; the client finds the others. Keys carry
    hash tags (``prefix{key}``, ``prefix lock:{key}``, ``prefix{gen}:name``), so the
    same ``prefix`` lays keys out differently on a cluster than on one server. One
    breaker covers the whole cluster, and ``max_connections`` is per node: a call that
    finds every connection to its node busy is a miss at once, not a wait.

    Ownership: a cache built from a URL owns its connection pool and ``aclose()`` closes
    it. A ``client`` you pass in is lent: ``aclose()`` flushes pending writes but leaves
    the client open for you to close. Such a client keeps its own socket timeouts and
    retry policy; the per-operation timeouts here apply all the same.

    Args:
        url: ``redis://[[user]:[password]@]host:6379/0``, ``rediss://...``,
            ``unix:///path.sock?db=0``, or for a cluster ``redis+cluster://host:6379`` /
            ``rediss+cluster://...``; query-string options reach redis-py's pool.
        client: a ``redis.asyncio.Redis`` or ``RedisCluster`` to use instead of a URL (not
            closed by us). It must not decode responses.
        cluster: treat ``url`` as a seed node of a Redis Cluster (implied by a
            ``+cluster`` scheme or a ``RedisCluster`` client).
        prefix: prepended to every key this cache writes; must not be empty.
        read_timeout: seconds a read (GET, MGET) may take, connecting included.
        write_timeout: seconds a write (a batch of SETs, DEL, INCR, a SCAN step) may take.
        max_pending_writes: queued writes beyond which new writes are dropped.
        max_connections: size of the connection pool built from ``url`` (per node on a
            cluster); on one server a call that finds every connection busy waits for
            one within its own timeout.
        close_timeout: seconds ``aclose()`` waits for pending writes before dropping them.
        breaker: the circuit breaker; pass one to tune it or to inject a clock.
        hmac_key: signs cross-process flight notices (HMAC-SHA256), so a follower trusts
            an error another process's leader reported; without it an error notice is
            only a hint (see ``RedisFlight``). Use the ``TieredCache``'s ``hmac_key``.

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL or
            client, or an out-of-range option.

    Example:
        >>> cache = TieredCache(MemoryCache(), RedisCache.from_url("redis://cache:6379/0"))
        >>> client = Client(cache=cache)
        >>> shared = RedisCache.from_url("redis+cluster://cache-0.internal:6379")
    """

    __slots__ = (
        "_client",
        "_closed",
        "_flights",
        "_generation_prefix",
        "_owns_client",
        "_reads",
        "_tag_close",
        "_tag_open",
        "_where",
        "_writes",
        "breaker",
        "close_timeout",
        "cluster",
        "hmac_key",
        "prefix",
        "read_timeout",
        "write_timeout",
    )

    def __init__(
        self,
        *,
        url: str | None = None,
        client: RedisClient | None = None,
        cluster: bool = False,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            # An empty prefix would make clear() delete every key in the database.
            raise ConfigurationError(f"RedisCache.prefix: expected a non-empty str, got {prefix!r}")
        for name, seconds in (
            ("read_timeout", read_timeout),
            ("write_timeout", write_timeout),
            ("close_timeout", close_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ConfigurationError(
                    f"RedisCache.{name}: expected seconds > 0, got {seconds!r}"
                )
        for name, count in (
            ("max_pending_writes", max_pending_writes),
            ("max_connections", max_connections),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigurationError(f"RedisCache.{name}: expected an int >= 1, got {count!r}")
        if not isinstance(cluster, bool):
            raise ConfigurationError(f"RedisCache.cluster: expected a bool, got {cluster!r}")
        if hmac_key is not None and (not isinstance(hmac_key, bytes) or not hmac_key):
            raise ConfigurationError("RedisCache.hmac_key: expected non-empty bytes or None")
        if (url is None) == (client is None):
            raise ConfigurationError("RedisCache: pass exactly one of url= or client=")

        if client is not None:
            if not isinstance(client, Redis | RedisCluster):
                raise ConfigurationError(
                    "RedisCache.client: expected a redis.asyncio.Redis or RedisCluster, "
                    f"got {type(client).__name__}"
                )
            if client.get_encoder().decode_responses:
                raise ConfigurationError(
                    "RedisCache.client: the client decodes responses; the cache stores bytes"
                )
            if cluster and not isinstance(client, RedisCluster):
                raise ConfigurationError(
                    "RedisCache.cluster: the client is a plain Redis, not a RedisCluster"
                )
            self._owns_client = False
        else:
            assert url is not None
            client = _client_from_url(
                url,
                cluster=cluster,
                # Generous: redis-py times a connect by the wall clock, which a busy event
                # loop runs fast; each command's own budget bounds what Redis may take.
                connect_timeout=max(read_timeout, write_timeout, _MIN_CONNECT_TIMEOUT),
                max_connections=max_connections,
            )
            self._owns_client = True
        self._client: RedisClient = client
        self._where = _describe_server(client)

        #: Whether this cache talks to a Redis Cluster (and tags its keys for one).
        self.cluster = isinstance(client, RedisCluster)
        if self.cluster and ("{" in prefix or "}" in prefix):
            # A brace in the prefix would move the hash tag off the cache key, and an entry
            # and its lease (touched by one script) could land on different slots.
            raise ConfigurationError(
                f"RedisCache.prefix: no braces on a cluster (keys are hash-tagged), got {prefix!r}"
            )
        self.prefix = prefix
        # Entry key: prefix + open + key + close; the hash tag is the cache key itself.
        self._tag_open, self._tag_close = ("{", "}") if self.cluster else ("", "")
        self._generation_prefix = prefix + ("{gen}:" if self.cluster else "gen:")
        self.read_timeout = float(read_timeout)
        self.write_timeout = float(write_timeout)
        self.close_timeout = float(close_timeout)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._closed = False
        self._writes = WriteQueue(
            pipelined_writes(client),
            self.breaker,
            timeout=self.write_timeout,
            max_pending=max_pending_writes,
            where=self._where,
            kind="redis",
            batch_size=WRITE_BATCH,
        )
        self._flights: RedisFlightStore | None = None
        #: Signs flight notices (see ``flight_store``); never in reprs or messages.
        self.hmac_key = hmac_key
        self._reads = ReadBatcher(self._get_one, self._get_many)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> RedisCache:
        """A cache that owns a connection pool to ``url``; see the class for the options.

        Example:
            >>> cache = RedisCache.from_url("redis://localhost:6379/0", prefix="myapp:")
            >>> shared = RedisCache.from_url("redis+cluster://10.0.0.5:6379")
        """
        return cls(
            url=url,
            cluster=cluster,
            prefix=prefix,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_pending_writes=max_pending_writes,
            max_connections=max_connections,
            close_timeout=close_timeout,
            breaker=breaker,
            hmac_key=hmac_key,
        )

    def __repr__(self) -> str:
        return (
            f"RedisCache({self._where}, prefix={self.prefix!r}, "
            f"breaker={self.breaker.state!r}, pending_writes={self.pending_writes})"
        )

    async def __aenter__(self) -> RedisCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def redis(self) -> RedisClient:
        """The ``redis.asyncio`` client (a ``RedisCluster`` on a cluster), for limpet's
        other uses of the same Redis.

        Call it through ``run()`` so the breaker and timeouts apply, and name keys with
        ``redis_key()`` and ``lock_key()`` so they land on the right slot; it is closed
        with the cache when the cache owns it.
        """
        return self._client

    @property
    def server(self) -> str:
        """Where this cache's Redis is (host and port, or the socket), never a password."""
        return self._where

    @property
    def flight_store(self) -> RedisFlightStore:
        """Leases and completion notices for cross-process single-flight on this Redis
        (closed with the cache)."""
        if self._flights is None:
            self._flights = RedisFlightStore(self)
        return self._flights

    def redis_key(self, key: str) -> str:
        """The Redis key under which this cache stores ``key``: ``prefix + key``, or on a
        cluster ``prefix + "{" + key + "}"``."""
        return self.prefix + self._tag_open + key + self._tag_close

    def lock_key(self, key: str) -> str:
        """The Redis key of ``key``'s single-flight lease: ``prefix + "lock:" + key``, or
        on a cluster ``prefix + "lock:{" + key + "}"``, in the same slot as its entry."""
        return self.prefix + "lock:" + self._tag_open + key + self._tag_close

    def generation_key(self, name: str) -> str:
        """The Redis key of generation ``name``: ``prefix + "gen:" + name``, or on a
        cluster ``prefix + "{gen}:" + name`` (every generation in one slot)."""
        return self._generation_prefix + name

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state: ``"closed"``, ``"open"`` or ``"half_open"``."""
        return self.breaker.state

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return len(self._writes)

    @property
    def dropped_writes(self) -> int:
        """Writes never attempted: the queue was full, or ``aclose()`` ran out of time."""
        return self._writes.dropped

    @property
    def failed_writes(self) -> int:
        """Writes attempted that did not land: Redis refused them, was down, or too slow."""
        return self._writes.failed

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        full = self.prefix + self._tag_open + key + self._tag_close
        queued = self._writes.queued(full)
        if queued is not None:
            # Not written yet, but this process already knows the answer.
            value, expires_at = queued
            return value if expires_at > time.monotonic() else None
        self._check_open()
        # Batched with the reads of concurrent callers: a burst is a few MGETs, not one
        # GET (and one pooled connection) per caller.
        data = await self._reads.get(full)
        if data is not None and not isinstance(data, bytes):
            raise CacheUnavailableError(f"redis GET returned {type(data).__name__}, not bytes")
        return data

    async def read_key(self, redis_key: str) -> object:
        """The value under a full Redis key (``redis_key()``), batched with the reads of
        concurrent callers, for this cache's other users (the affinity map).

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        return await self._reads.get(redis_key)

    async def _get_one(self, full: str) -> object:
        return await self.run("GET", self.read_timeout, partial(self._client.get, full))

    async def _get_many(self, keys: Sequence[str]) -> Sequence[object]:
        client = self._client
        # On a cluster the keys span slots: redis-py splits them into one pipeline per node.
        fetch: Callable[[], Awaitable[Sequence[object]]] = (
            partial(client.mget_nonatomic, keys)
            if isinstance(client, RedisCluster)
            else partial(client.mget, keys)
        )
        return await self.run("MGET", self.read_timeout, fetch)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Queue ``value`` under ``key`` for ``ttl`` seconds and return without waiting.

        A ``ttl`` of 0 or less removes the key instead. When the queue is full the write
        is dropped and counted in ``dropped_writes``.

        Raises:
            CacheUnavailableError: the breaker is open (no write is queued), or closed.
        """
        self._check_open()
        if self.breaker.state == "open":
            raise CacheUnavailableError(f"redis SET skipped: circuit breaker open ({self._where})")
        self._writes.put(self.redis_key(key), value, ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still queued.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        full = self.redis_key(key)
        # Else a write in flight could land after the DEL and revive the key.
        await self._writes.discard(full)
        await self.run("DEL", self.write_timeout, partial(self._client.delete, full))

    async def clear(self) -> None:
        """Remove every key under ``prefix`` (SCAN + UNLINK, on every primary of a
        cluster: an admin operation, not for the hot path), and every queued write.

        Generation counters are kept: resetting one to 0 could make an entry that another
        process still holds under an old generation valid again.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        await self._writes.discard_all()
        pattern = _glob_escape(self.prefix) + "*"
        keep = self._generation_prefix.encode()
        for node in await self._primaries():
            cursor = 0
            while True:
                cursor, keys = await self.run(
                    "SCAN", self.write_timeout, partial(self._scan, node, cursor, pattern)
                )
                doomed = [k for k in keys if not _as_bytes(k).startswith(keep)]
                if doomed:
                    await self.run(
                        "UNLINK", self.write_timeout, partial(self._client.unlink, *doomed)
                    )
                if cursor == 0:
                    break

    async def generations(self, names: Sequence[str]) -> list[int]:
        """The current generation of each name (0 when never bumped), in one MGET.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, closed, or a
                counter holds something other than an integer.
        """
        if not names:
            return []
        self._check_open()
        keys = [self._generation_prefix + name for name in names]
        values = await self.run("MGET", self.read_timeout, partial(self._client.mget, keys))
        result = []
        for name, value in zip(names, values, strict=True):
            try:
                result.append(0 if value is None else int(value))
            except ValueError as exc:
                raise CacheUnavailableError(
                    f"redis generation {name!r} is not an integer: {value!r}"
                ) from exc
        return result

    async def bump_generation(self, name: str) -> int:
        """Add one to ``name``'s generation (INCR; the counter never expires).

        Returns:
            The new generation.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        key = self._generation_prefix + name
        result: int = await self.run("INCR", self.write_timeout, partial(self._client.incr, key))
        return result

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        await self._writes.flush()

    async def aclose(self) -> None:
        """Send pending writes (for at most ``close_timeout``), then close the connection
        pool if this cache owns it. Idempotent; later operations raise
        ``CacheUnavailableError``."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._reads.aclose()
            await self._writes.close(self.close_timeout)
        finally:
            flights, self._flights = self._flights, None
            if flights is not None:
                await flights.aclose()
            if self._owns_client:
                client = self._client
                try:
                    await client.aclose()
                    if isinstance(client, RedisCluster):
                        # redis-py's aclose() closes nothing while a topology refresh is
                        # pending (after a node failed): close every node's connections.
                        await client.nodes_manager.aclose()
                        await client.nodes_manager.aclose("startup_nodes")
                except Exception as exc:
                    raise CacheUnavailableError(
                        f"closing the connection pool to {self._where} failed: {exc}"
                    ) from exc

    async def run(
        self,
        command: str,
        budget: float,
        call: Callable[[], Awaitable[_T]],
        *,
        gated: bool = True,
    ) -> _T:
        """Run one Redis call under this cache's breaker, within ``budget`` seconds of
        the server's time.

        The one boundary to Redis: other parts of limpet that talk to the same Redis (the
        cross-process flight store) go through it, so they share the breaker and the error
        mapping.

        Args:
            command: a name for messages, e.g. ``"GET"``.
            budget: seconds the call may take, connecting included; time the event loop
                spends on other work is not counted (``redis_reads.server_deadline``), so
                a busy process is not taken for a slow Redis.
            call: makes the call, e.g. ``lambda: cache.redis.get(cache.redis_key(key))``.
            gated: False lets the call through an open breaker (its verdict still
                counts): for the few calls that must be attempted whatever the breaker
                says, such as dropping a flight lease.

        Returns:
            What ``call`` returned.

        Raises:
            CacheUnavailableError: the breaker is open, the cache is closed, the call timed
                out or failed, or Redis answered with an error (which does not count
                against the breaker: Redis is up).
        """
        if self._closed:
            raise CacheUnavailableError(f"RedisCache for {self._where} is closed")
        breaker = self.breaker
        if gated and not breaker.allow():
            raise CacheUnavailableError(
                f"redis {command} skipped: circuit breaker open ({self._where})"
            )
        epoch = breaker.epoch
        try:
            async with server_deadline(budget):
                result = await call()
        except TimeoutError as exc:
            breaker.record_failure(epoch)
            raise CacheUnavailableError(
                f"redis {command} timed out after {budget * 1000:.0f} ms ({self._where})"
            ) from exc
        except MaxConnectionsError as exc:
            # A cluster node's pool is full: this process is busy, Redis is not down.
            breaker.release(epoch)
            raise CacheUnavailableError(
                f"redis {command}: no free connection ({self._where})"
            ) from exc
        except Exception as exc:
            if redis_replied(exc):
                # Redis answered (OOM, WRONGTYPE, ...): it is up, so this must not open
                # the breaker and turn a refused write into an outage for reads too.
                breaker.record_success(epoch)
                raise CacheUnavailableError(
                    f"redis {command} refused ({self._where}): {exc}"
                ) from exc
            # RedisError and OSError mostly, but redis-py can surface other errors when a
            # connection is torn down mid-command; only CacheUnavailableError may leave.
            breaker.record_failure(epoch)
            raise CacheUnavailableError(f"redis {command} failed ({self._where}): {exc}") from exc
        except BaseException:
            # Cancelled by our caller: says nothing about Redis.
            breaker.release(epoch)
            raise
        breaker.record_success(epoch)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise CacheUnavailableError(f"RedisCache for {self._where} is closed")

    async def _primaries(self) -> list[ClusterNode | None]:
        """Where ``clear()`` scans: every primary of a cluster, or the one server (None)."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return [None]
        # The node map is known only once the client has asked the cluster for it.
        await self.run("CLUSTER SLOTS", self.write_timeout, client.initialize)
        return list(client.get_primaries())

    async def _scan(
        self, node: ClusterNode | None, cursor: int, pattern: str
    ) -> tuple[int, list[Any]]:
        client = self._client
        if node is None or not isinstance(client, RedisCluster):
            assert isinstance(client, Redis)
            step: tuple[int, list[Any]] = await client.scan(
                cursor, match=pattern, count=_SCAN_COUNT
            )
            return step
        # A cluster client answers a SCAN with a cursor per node it asked.
        reply: Any = await client.scan(cursor, match=pattern, count=_SCAN_COUNT, target_nodes=node)
        cursors, keys = reply
        return int(cursors[node.name]), list(keys)


def _client_from_url(
    url: str, *, cluster: bool, connect_timeout: float, max_connections: int
) -> RedisClient:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in CLUSTER_SCHEMES:
        url = CLUSTER_SCHEMES[scheme.lower()] + "://" + rest
        cluster = True
    options: dict[str, Any] = {
        # Bounds the awaits redis-py makes outside an operation (closing a connection).
        "socket_connect_timeout": connect_timeout,
        # No socket_timeout: every command already runs under an asyncio timeout here,
        # and with one redis-py wraps each send in asyncio.wait_for, which on Python 3.11
        # can swallow a cancellation that races the send (CPython gh-86296): a cancelled
        # task would carry on, and whoever awaits it would wait forever.
        "socket_timeout": None,
        # One immediate retry, on a fresh connection, when a pooled one turns out dead
        # (Redis restarted, or closed it while idle): without it every stale connection
        # fails one command after a restart, enough to reopen the breaker. Nothing
        # longer: the operation's own budget bounds both tries, and a Redis that is down
        # is the breaker's to handle.
        "retry": Retry(NoBackoff(), 1),
        "max_connections": max_connections,
    }
    try:
        if cluster:
            return RedisCluster.from_url(url, **options)
        # The caller's own timeout bounds the wait for a free connection.
        pool = BlockingConnectionPool.from_url(url, timeout=None, **options)
    except (ValueError, TypeError, RedisClusterException) as exc:
        # redis-py's messages quote the scheme or option, never the URL's password.
        raise ConfigurationError(f"RedisCache.url: {exc}") from exc
    return Redis.from_pool(pool)


def _describe_server(client: RedisClient) -> str:
    """``host:port/db``, ``unix:path/db`` or ``cluster:host:port``; never credentials."""
    if isinstance(client, RedisCluster):
        seeds = client.nodes_manager.startup_nodes
        return "cluster:" + (next(iter(seeds)) if seeds else "?")
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    path = kwargs.get("path")
    if path:
        return f"unix:{path}/{db}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _as_bytes(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()

"""The Redis backend: bytes under prefixed keys with Redis-native TTLs, on ``redis.asyncio``.

Bounded operations (reads 50 ms, writes 100 ms), the circuit breaker, background writes
and the mapping of every failure to ``CacheUnavailableError`` are what every remote tier
does (``limpet.cache.remote``). Connecting is ``connection``'s, ``clear()``'s SCAN is
``scan``'s, and the generation counters are ``generations``'.

The same cache runs on one server or on a Redis Cluster. On a cluster every key carries
a hash tag, so that each operation stays on one slot: an entry and its flight lease
(which one Lua script touches) share the cache key as their tag, and every generation
counter shares the tag ``{gen}`` (read together in one MGET).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import ClassVar, TypeVar

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.capabilities import TierCapabilities
from limpet.cache.counter_starts import CounterStarts
from limpet.cache.reads import ReadBatcher
from limpet.cache.redis.connection import (
    CLUSTER_SCHEMES,
    check_prefix,
    close_owned_client,
    describe_server,
    redis_client,
)
from limpet.cache.redis.generations import bump_generation, read_generations
from limpet.cache.redis.leases import RedisFlightStore
from limpet.cache.redis.lone import LoneReads
from limpet.cache.redis.scan import unlink_prefix
from limpet.cache.redis.writes import WRITE_BATCH, RedisClient, pipelined_writes, redis_replied
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
from limpet.cache.slots import ConnectionSlots
from limpet.errors import CacheUnavailableError

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_PENDING_WRITES",
    "DEFAULT_PREFIX",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_REDIS_MAX_CONNECTIONS",
    "DEFAULT_WRITE_TIMEOUT",
    "RedisCache",
    "RedisClient",
]

#: Connections in the pool a ``RedisCache`` builds from a URL (per node on a cluster).
DEFAULT_REDIS_MAX_CONNECTIONS = 64

_T = TypeVar("_T")


class RedisCache(RemoteCache):
    """A ``CacheBackend`` on Redis: ``RedisCache.from_url("redis://localhost:6379/0")``.

    Construction never touches the network; the first operation connects. Keys are
    written under ``prefix``, so ``clear()`` removes limpet's keys and nothing else.

    Writes are queued and sent in the background (``pending_writes``,
    ``dropped_writes``, ``failed_writes``, ``flush()``), and an open circuit breaker
    fails every operation at once, as on every remote tier (see ``RemoteCache``).

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
        read_timeout: seconds a read (GET, MGET) may take; one that opens a connection
            of a pool built from ``url`` on one server gets four times more for it (not
            on a lent client or a cluster: set it above a few round trips there).
        write_timeout: seconds a write (a batch of SETs, DEL, INCR, a SCAN step) may take.
        max_pending_writes: queued writes beyond which ``set()`` drops new writes
            (``embed()`` waits for room while the tier is healthy: ``wait_for_write_room``).
        max_connections: size of the connection pool built from ``url`` (per node on a
            cluster); on one server a call that finds every connection busy waits for
            one outside its timeout (the server's time starts once it holds one), for at
            most twenty timeouts (then a counted miss, "no free connection", the breaker
            not told), and one connection is kept for the reads sent alone
            (``limpet.cache.redis.lone``). Following a cross-process flight subscribes
            to its notices on one connection more, outside the pool.
        close_timeout: seconds ``aclose()`` waits for pending writes before dropping them.
        breaker: the circuit breaker; pass one to tune it or to inject a clock.
        hmac_key: signs cross-process flight notices (HMAC-SHA256), so a follower trusts
            an error another process's leader reported; without it an error notice is
            only a hint (see ``RedisFlight``). A ``TieredCache`` given no ``hmac_key``
            signs its entries with this one; one given a key lends it here when unset.

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
        "_counter_starts",
        "_flights",
        "_generation_prefix",
        "_lone",
        "_owns_client",
        "_reads",
        "_slots",
        "_tag_close",
        "_tag_open",
        "cluster",
    )

    capabilities: ClassVar[TierCapabilities] = TierCapabilities(
        shared=True, generations=True, leases=True, pubsub=True, breaker=True, redis=True
    )
    _kind: ClassVar[str] = "redis"

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
        max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
        hmac_key: bytes | None = None,
    ) -> None:
        settings = remote_settings(
            "RedisCache",
            prefix=prefix,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            close_timeout=close_timeout,
            max_pending_writes=max_pending_writes,
            max_connections=max_connections,
            hmac_key=hmac_key,
            breaker=breaker,
        )
        client = redis_client(url, client, cluster=cluster, settings=settings)
        self._owns_client = url is not None
        self._client: RedisClient = client
        #: Whether this cache talks to a Redis Cluster (and tags its keys for one).
        self.cluster = isinstance(client, RedisCluster)
        check_prefix(prefix, cluster=self.cluster)
        # Entry key: prefix + open + key + close; the hash tag is the cache key itself.
        self._tag_open, self._tag_close = ("{", "}") if self.cluster else ("", "")
        self._generation_prefix = prefix + ("{gen}:" if self.cluster else "gen:")
        self._counter_starts = CounterStarts()
        # redis-py's cluster pools fail a command at once when its node has no free
        # connection, where a single server's pool waits for one: on a cluster a burst
        # waits here for one of max_connections places instead (less one, kept for the
        # flight notices' subscription), outside each command's budget as a single
        # server's pool wait is (``limpet.cache.slots``), rather than fail and fall
        # through (a burst of embedding leases did, and sent inputs twice).
        self._slots = ConnectionSlots(settings.max_connections - 1) if self.cluster else None
        super().__init__(
            settings,
            where=describe_server(client),
            send=pipelined_writes(client, self._slots),
            clear=partial(unlink_prefix, self),
            batch_size=WRITE_BATCH,
            breaker=breaker,
        )
        self._flights: RedisFlightStore | None = None
        # A read alone goes on a connection kept for it, when the pool is ours to keep
        # one from (on a cluster, keys live on several nodes: through the client) and
        # has another for every other command (kept from a pool of one, it left them
        # none: each waited 20 budgets, and every write failed).
        self._lone = (
            LoneReads(client.connection_pool)
            if self._owns_client and isinstance(client, Redis) and settings.max_connections > 1
            else None
        )
        self._reads = ReadBatcher(self._get_one, self._get_many, kind="Redis")

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
        max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS,
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

    @property
    def redis(self) -> RedisClient:
        """The ``redis.asyncio`` client (a ``RedisCluster`` on a cluster), for limpet's
        other uses of the same Redis.

        Call it through ``run()`` so the breaker and timeouts apply, and name keys with
        ``redis_key()`` and ``lock_key()`` so they land on the right slot; it is closed
        with the cache when the cache owns it.
        """
        return self._client

    def notices_pubsub(self) -> PubSub:
        """A subscription for the flight notices: where the pool is this cache's, on one
        server, on a connection of its own outside it (held for the subscription's life,
        one of the pool's would leave the other commands one fewer; a pool of one, none,
        and every read and write waited twenty budgets and failed); else the client's (a
        cluster's keeps a place for it, a lent client's pool is its owner's to size)."""
        client = self._client
        if not (self._owns_client and isinstance(client, Redis)):
            return client.pubsub()
        pool = client.connection_pool
        own = ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **pool.connection_kwargs
        )
        return PubSub(own)

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

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        full = self.prefix + self._tag_open + key + self._tag_close
        queued, value = self._queued(full)
        if queued:
            return value
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

    def _get_one(self, full: str) -> Awaitable[object]:
        fetch = self._client.get if self._lone is None else self._lone.get
        return self._guarded(
            "GET", self.read_timeout, self._placed(partial(fetch, full)), gated=True
        )

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
        self._check_writable()
        self._writes.put(self.redis_key(key), value, ttl)

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still queued. A delete that cannot be made
        now (the breaker open, Redis failing, a write of the key on its way, which could
        land after it) is owed: sent once Redis takes commands, a miss here until then.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed
                (the delete owed, but when closed).
        """
        self._check_open()
        full = self.redis_key(key)
        try:
            await self._delete_now(
                full,
                partial(self.run, "DEL", self.write_timeout, partial(self._client.delete, full)),
            )
        finally:
            self._reads.forget(full)  # a read sent before the delete

    async def clear(self) -> None:
        """Remove every key under ``prefix`` (SCAN + UNLINK, on every primary of a
        cluster: an admin operation, not for the hot path), but those of a cache whose
        prefix extends this one (``is_own_key``), and every queued write.

        Generation counters are kept: resetting one to 0 could make an entry that another
        process still holds under an old generation valid again.

        A clear that cannot be made now is owed, as a delete is (see ``delete``).

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        try:
            await self._clear_now(partial(unlink_prefix, self))
        finally:
            self._reads.forget()

    async def generations(self, names: Sequence[str]) -> list[int]:
        """The current generation of each name, in one MGET. A missing one (never bumped,
        evicted, lost in a restart) is created above every value it had, so losing it never
        revives invalidated entries (``limpet.cache.redis.generations``).

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, closed, or a
                counter holds something other than an integer.
        """
        if not names:
            return []
        self._check_open()
        return await read_generations(self, self._counter_starts, names)

    async def bump_generation(self, name: str) -> int:
        """Add one to ``name``'s generation (INCR; the counter never expires, and is
        created first when missing).

        Returns:
            The new generation.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        return await bump_generation(self, self._counter_starts, name)

    async def aclose(self) -> None:
        """Send pending writes (for at most ``close_timeout``), then close the connection
        pool if this cache owns it. Idempotent; later operations raise
        ``CacheUnavailableError``."""
        if self._closed:
            return
        try:
            await self._reads.aclose()
            if self._lone is not None:
                await self._lone.aclose()
            await self._close_writes()
        finally:
            flights, self._flights = self._flights, None
            if flights is not None:
                await flights.aclose()
            if self._owns_client:
                await close_owned_client(self._client, self._where)

    async def run(
        self,
        command: str,
        budget: float,
        call: Callable[[], Awaitable[_T]],
        *,
        gated: bool = True,
    ) -> _T:
        """Run one Redis call under this cache's breaker, within ``budget`` seconds of
        the server's time: the one boundary to Redis. limpet's other users of the same
        Redis (flight store, affinity map, fleet counters) go through it, so they share
        the breaker and the error mapping.

        Args:
            command: a name for messages, e.g. ``"GET"``.
            budget: seconds the call may take, connecting included; time the event loop
                spends on other work is not counted (``limpet.cache.budget``), so a
                busy process is not taken for a slow Redis.
            call: makes the call, e.g. ``lambda: cache.redis.get(cache.redis_key(key))``.
            gated: False lets the call through an open breaker (its verdict still
                counts), for the few calls that must be attempted whatever the breaker
                says, such as dropping a flight lease.

        Raises:
            CacheUnavailableError: the breaker is open, the cache is closed, the call timed
                out or failed, or Redis answered with an error (which does not count
                against the breaker: Redis is up).
        """
        return await self._guarded(command, budget, self._placed(call), gated=gated)

    def _placed(self, call: Callable[[], Awaitable[_T]]) -> Callable[[], Awaitable[_T]]:
        """``call``, made once one of the cluster's places is free (see ``_slots``); as
        it is on a single server."""
        slots = self._slots
        if slots is None:
            return call

        async def placed() -> _T:
            async with slots:
                return await call()

        return placed

    def _verdict(self, exc: Exception) -> Verdict:
        if isinstance(exc, MaxConnectionsError):
            # A cluster node's pool is full: this process is busy, Redis is not down.
            return Verdict.BUSY
        if isinstance(exc, RedisTimeoutError):  # a lent client's own socket timeout
            return Verdict.SLOW
        # Redis's own error reply (OOM, WRONGTYPE, ...) means it is up. Anything else is
        # RedisError or OSError mostly, but redis-py can surface other errors when a
        # connection is torn down mid-command.
        return Verdict.REFUSED if redis_replied(exc) else Verdict.DOWN

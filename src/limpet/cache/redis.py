"""The Redis backend: bytes under prefixed keys with Redis-native TTLs, on ``redis.asyncio``.

A cache must never make a call slower than having no cache, so every operation here is
bounded: reads by ``read_timeout`` (50 ms), writes by ``write_timeout`` (100 ms), and a
circuit breaker stops calling a Redis that keeps failing, so an outage costs three
timeouts, not one per call. Writes never wait at all: ``set()`` queues the value and a
single background writer sends queued values in pipelined batches.

Every failure leaves as ``CacheUnavailableError`` (with the redis-py or OS error as its
``__cause__``); falling through to another tier is ``TieredCache``'s job, not this one's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from limpet.cache.breaker import BreakerState, CircuitBreaker
from limpet.cache.redis_flight import RedisFlightStore
from limpet.errors import CacheUnavailableError, ConfigurationError

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PENDING_WRITES",
    "DEFAULT_PREFIX",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "RedisCache",
]

logger = logging.getLogger("limpet.cache")

DEFAULT_PREFIX = "limpet:"
DEFAULT_READ_TIMEOUT = 0.050
DEFAULT_WRITE_TIMEOUT = 0.100
DEFAULT_MAX_PENDING_WRITES = 1_000
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_CLOSE_TIMEOUT = 5.0

# Enough to amortise a round trip, small enough that one batch fits in a write timeout.
_WRITE_BATCH = 64
# SCAN hint for clear(): large enough to be quick, small enough to keep each step short.
_SCAN_COUNT = 1_000
_GENERATION_NAMESPACE = "gen:"

_T = TypeVar("_T")
# A queued write: the value (None deletes the key) and its monotonic expiry time.
_Write = tuple[bytes | None, float]


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

    Ownership: a cache built from a URL owns its connection pool and ``aclose()`` closes
    it. A ``client`` you pass in is lent: ``aclose()`` flushes pending writes but leaves
    the client open for you to close. Such a client keeps its own socket timeouts and
    retry policy; the per-operation timeouts here apply all the same.

    Args:
        url: ``redis://[[user]:[password]@]host:6379/0``, ``rediss://...`` or
            ``unix:///path.sock?db=0``; query-string options reach redis-py's pool.
        client: a ``redis.asyncio.Redis`` to use instead of a URL (not closed by us).
            It must not decode responses.
        prefix: prepended to every key this cache writes; must not be empty.
        read_timeout: seconds a read (GET, MGET) may take, connecting included.
        write_timeout: seconds a write (a batch of SETs, DEL, INCR, a SCAN step) may take.
        max_pending_writes: queued writes beyond which new writes are dropped.
        max_connections: size of the connection pool built from ``url``; a call that finds
            every connection busy waits for one within its own timeout.
        close_timeout: seconds ``aclose()`` waits for pending writes before dropping them.
        breaker: the circuit breaker; pass one to tune it or to inject a clock.

    Raises:
        ConfigurationError: neither or both of ``url`` and ``client``, an unusable URL or
            client, or an out-of-range option.

    Example:
        >>> cache = TieredCache(MemoryCache(), RedisCache.from_url("redis://cache:6379/0"))
        >>> client = Client(cache=cache)
    """

    __slots__ = (
        "_client",
        "_closed",
        "_dropped_writes",
        "_failed_writes",
        "_flights",
        "_inflight",
        "_owns_client",
        "_pending",
        "_where",
        "_write_failing",
        "_writer",
        "_writing",
        "breaker",
        "close_timeout",
        "max_pending_writes",
        "prefix",
        "read_timeout",
        "write_timeout",
    )

    def __init__(
        self,
        *,
        url: str | None = None,
        client: Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_pending_writes: int = DEFAULT_MAX_PENDING_WRITES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
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
        if (url is None) == (client is None):
            raise ConfigurationError("RedisCache: pass exactly one of url= or client=")

        if client is not None:
            if not isinstance(client, Redis):
                raise ConfigurationError(
                    "RedisCache.client: expected a redis.asyncio.Redis, "
                    f"got {type(client).__name__}"
                )
            if client.connection_pool.connection_kwargs.get("decode_responses"):
                raise ConfigurationError(
                    "RedisCache.client: the client decodes responses; the cache stores bytes"
                )
            self._owns_client = False
        else:
            assert url is not None
            client = _client_from_url(
                url,
                socket_timeout=max(read_timeout, write_timeout),
                max_connections=max_connections,
            )
            self._owns_client = True
        self._client: Redis = client
        self._where = _describe_server(client)

        self.prefix = prefix
        self.read_timeout = float(read_timeout)
        self.write_timeout = float(write_timeout)
        self.max_pending_writes = max_pending_writes
        self.close_timeout = float(close_timeout)
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self._closed = False
        self._dropped_writes = 0
        self._failed_writes = 0
        self._write_failing = False
        # Writes waiting for the writer, oldest first, keyed by the full Redis key so a
        # newer value for a key replaces an older one that was never sent.
        self._pending: OrderedDict[str, _Write] = OrderedDict()
        # The batch the writer is sending now, and an event set when it is done.
        self._writing: dict[str, _Write] = {}
        self._inflight: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._flights: RedisFlightStore | None = None

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
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        breaker: CircuitBreaker | None = None,
    ) -> RedisCache:
        """A cache that owns a connection pool to ``url``; see the class for the options.

        Example:
            >>> cache = RedisCache.from_url("redis://localhost:6379/0", prefix="myapp:")
        """
        return cls(
            url=url,
            prefix=prefix,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            max_pending_writes=max_pending_writes,
            max_connections=max_connections,
            close_timeout=close_timeout,
            breaker=breaker,
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
    def redis(self) -> Redis:
        """The ``redis.asyncio`` client, for limpet's other uses of the same Redis.

        Call it through ``run()`` so the breaker and timeouts apply; it is closed with the
        cache when the cache owns it.
        """
        return self._client

    @property
    def flight_store(self) -> RedisFlightStore:
        """Leases and completion notices for cross-process single-flight on this Redis
        (closed with the cache)."""
        if self._flights is None:
            self._flights = RedisFlightStore(self)
        return self._flights

    def redis_key(self, key: str) -> str:
        """The Redis key under which this cache stores ``key`` (``prefix + key``)."""
        return self.prefix + key

    @property
    def breaker_state(self) -> BreakerState:
        """The circuit breaker's state: ``"closed"``, ``"open"`` or ``"half_open"``."""
        return self.breaker.state

    @property
    def pending_writes(self) -> int:
        """Writes queued or being sent."""
        return len(self._pending) + len(self._writing)

    @property
    def dropped_writes(self) -> int:
        """Writes never attempted: the queue was full, or ``aclose()`` ran out of time."""
        return self._dropped_writes

    @property
    def failed_writes(self) -> int:
        """Writes attempted that did not land: Redis refused them, was down, or too slow."""
        return self._failed_writes

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        full = self.prefix + key
        queued = self._pending.get(full) or self._writing.get(full)
        if queued is not None:
            # Not written yet, but this process already knows the answer.
            value, expires_at = queued
            return value if expires_at > time.monotonic() else None
        data = await self.run("GET", self.read_timeout, lambda: self._client.get(full))
        if data is not None and not isinstance(data, bytes):
            raise CacheUnavailableError(f"redis GET returned {type(data).__name__}, not bytes")
        return data

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
        full = self.prefix + key
        pending = self._pending
        if full not in pending and len(pending) >= self.max_pending_writes:
            self._dropped_writes += 1
            return
        expires_at = time.monotonic() + ttl
        pending[full] = (value if ttl > 0 else None, expires_at)
        pending.move_to_end(full)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="limpet-redis-writer"
            )

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still queued.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        full = self.prefix + key
        self._pending.pop(full, None)
        if full in self._writing:
            # Else the batch in flight could land after the DEL and revive the key.
            await self._await_inflight()
        await self.run("DEL", self.write_timeout, lambda: self._client.delete(full))

    async def clear(self) -> None:
        """Remove every key under ``prefix`` (SCAN + UNLINK: an admin operation, not for
        the hot path), and every queued write.

        Generation counters are kept: resetting one to 0 could make an entry that another
        process still holds under an old generation valid again.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
        """
        self._check_open()
        self._pending.clear()
        await self._await_inflight()
        pattern = _glob_escape(self.prefix) + "*"
        keep = (self.prefix + _GENERATION_NAMESPACE).encode()
        cursor = 0
        while True:
            cursor, keys = await self.run(
                "SCAN",
                self.write_timeout,
                partial(self._client.scan, cursor, match=pattern, count=_SCAN_COUNT),
            )
            doomed = [k for k in keys if not _as_bytes(k).startswith(keep)]
            if doomed:
                await self.run("UNLINK", self.write_timeout, partial(self._client.unlink, *doomed))
            if cursor == 0:
                return

    async def generations(self, names: Sequence[str]) -> list[int]:
        """The current generation of each name (0 when never bumped), in one MGET.

        Raises:
            CacheUnavailableError: Redis is down, slow, the breaker is open, closed, or a
                counter holds something other than an integer.
        """
        if not names:
            return []
        self._check_open()
        keys = [self.prefix + _GENERATION_NAMESPACE + name for name in names]
        values = await self.run("MGET", self.read_timeout, lambda: self._client.mget(keys))
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
        key = self.prefix + _GENERATION_NAMESPACE + name
        return await self.run("INCR", self.write_timeout, lambda: self._client.incr(key))

    async def flush(self) -> None:
        """Wait until every queued write has been sent (or has failed)."""
        while (writer := self._writer) is not None and not writer.done():
            # Shielded: a caller that gives up waiting must not cancel everyone's writes.
            await asyncio.shield(writer)

    async def aclose(self) -> None:
        """Send pending writes (for at most ``close_timeout``), then close the connection
        pool if this cache owns it. Idempotent; later operations raise
        ``CacheUnavailableError``."""
        if self._closed:
            return
        self._closed = True
        try:
            async with asyncio.timeout(self.close_timeout):
                await self.flush()
        except TimeoutError:
            logger.warning(
                "limpet cache: %d writes to redis at %s dropped on close after %.1f s",
                self.pending_writes,
                self._where,
                self.close_timeout,
            )
        finally:
            writer, self._writer = self._writer, None
            if writer is not None and not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._dropped_writes += len(self._pending)
            self._pending.clear()
            flights, self._flights = self._flights, None
            if flights is not None:
                await flights.aclose()
            if self._owns_client:
                try:
                    await self._client.aclose()
                except Exception as exc:
                    raise CacheUnavailableError(
                        f"closing the connection pool to {self._where} failed: {exc}"
                    ) from exc

    async def run(self, command: str, budget: float, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call under this cache's breaker, within ``budget`` seconds.

        The one boundary to Redis: other parts of limpet that talk to the same Redis (the
        cross-process flight store) go through it, so they share the breaker and the error
        mapping.

        Args:
            command: a name for messages, e.g. ``"GET"``.
            budget: seconds the call may take, connecting included.
            call: makes the call, e.g. ``lambda: cache.redis.get(cache.redis_key(key))``.

        Returns:
            What ``call`` returned.

        Raises:
            CacheUnavailableError: the breaker is open, the cache is closed, the call timed
                out or failed, or Redis answered with an error (which does not count
                against the breaker: Redis is up).
        """
        self._check_open()
        if not self.breaker.allow():
            raise CacheUnavailableError(
                f"redis {command} skipped: circuit breaker open ({self._where})"
            )
        epoch = self.breaker.epoch
        try:
            async with asyncio.timeout(budget):
                result = await call()
        except ResponseError as exc:
            # Redis answered (OOM, WRONGTYPE, ...): it is up, so this must not open the
            # breaker and turn a refused write into an outage for reads too.
            self.breaker.record_success(epoch)
            raise CacheUnavailableError(f"redis {command} refused ({self._where}): {exc}") from exc
        except TimeoutError as exc:
            self.breaker.record_failure(epoch)
            raise CacheUnavailableError(
                f"redis {command} timed out after {budget * 1000:.0f} ms ({self._where})"
            ) from exc
        except Exception as exc:
            # RedisError and OSError mostly, but redis-py can surface other errors when a
            # connection is torn down mid-command; only CacheUnavailableError may leave.
            self.breaker.record_failure(epoch)
            raise CacheUnavailableError(f"redis {command} failed ({self._where}): {exc}") from exc
        except BaseException:
            # Cancelled by our caller: says nothing about Redis.
            self.breaker.release(epoch)
            raise
        self.breaker.record_success(epoch)
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise CacheUnavailableError(f"RedisCache for {self._where} is closed")

    async def _await_inflight(self) -> None:
        done = self._inflight
        if done is None:
            return
        try:
            # The batch is bounded by write_timeout; waiting on it is too.
            async with asyncio.timeout(self.write_timeout * 2):
                await done.wait()
        except TimeoutError as exc:
            raise CacheUnavailableError(
                f"redis write in flight did not finish ({self._where})"
            ) from exc

    async def _drain(self) -> None:
        """The background writer: send queued writes in batches until none are left."""
        pending = self._pending
        while pending:
            batch = [pending.popitem(last=False) for _ in range(min(len(pending), _WRITE_BATCH))]
            self._writing = dict(batch)
            self._inflight = done = asyncio.Event()
            try:
                await self._write_batch(batch)
            finally:
                self._writing = {}
                self._inflight = None
                done.set()

    async def _write_batch(self, batch: list[tuple[str, _Write]]) -> None:
        if not self.breaker.allow():
            self._failed_writes += len(batch)
            return
        epoch = self.breaker.epoch
        now = time.monotonic()
        try:
            async with asyncio.timeout(self.write_timeout):
                async with self._client.pipeline(transaction=False) as pipe:
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
            self.breaker.release(epoch)
            raise
        except Exception as exc:
            self.breaker.record_failure(epoch)
            self._failed_writes += len(batch)
            self._write_fault(len(batch), exc)
            return
        # Redis answered, even if it refused some commands (OOM): it is up.
        self.breaker.record_success(epoch)
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            self._failed_writes += len(refused)
            self._write_fault(len(refused), refused[0])
        elif self._write_failing:
            self._write_failing = False
            logger.info("limpet cache: writes to redis at %s resumed", self._where)

    def _write_fault(self, count: int, exc: BaseException) -> None:
        # No caller sees a background write fail, so this is the one place it is told.
        if not self._write_failing:
            self._write_failing = True
            reason = (
                "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            )
            logger.warning(
                "limpet cache: %d writes to redis at %s failed (logged once per outage): %s",
                count,
                self._where,
                reason,
            )


def _client_from_url(url: str, *, socket_timeout: float, max_connections: int) -> Redis:
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # The caller's own timeout bounds the wait for a free connection.
            timeout=None,
            # Socket timeouts are a second line behind the per-operation asyncio timeouts,
            # for the awaits redis-py makes outside an operation (closing, health checks).
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # No retries: a retry cannot fit in a 50 ms budget, and recovery is the
            # breaker's job.
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, TypeError) as exc:
        # redis-py's messages quote the scheme or option, never the URL's password.
        raise ConfigurationError(f"RedisCache.url: {exc}") from exc
    return Redis.from_pool(pool)


def _describe_server(client: Redis) -> str:
    """``host:port/db`` or ``unix:path/db``; never credentials."""
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

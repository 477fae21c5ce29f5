"""How ``RedisCache`` reaches Redis: a client built from a URL, or a lent one checked.

The URL becomes a ``redis.asyncio`` client (a blocking pool on one server, a
``RedisCluster`` for a ``+cluster`` scheme) with the socket options a bounded cache needs;
a lent client is checked for what the cache relies on. Neither touches the network.

The blocking pool tells each call's budget (``limpet.cache.budget``) when it waits for a
free connection: a burst of this process's own calls holding every connection is not a
slow Redis, so the budget counts from the moment a connection is held.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException

from limpet._urls import url_secrets
from limpet.cache.budget import connecting, connection_held, queueing
from limpet.cache.redis.writes import RedisClient
from limpet.cache.remote import RemoteSettings, check_source
from limpet.errors import CacheUnavailableError, ConfigurationError, scrub

__all__ = [
    "CLUSTER_SCHEMES",
    "MIN_CONNECT_TIMEOUT",
    "QueuedConnectionPool",
    "check_lent_client",
    "check_prefix",
    "client_from_url",
    "close_owned_client",
    "describe_server",
    "redis_client",
]

#: URL schemes that mean a Redis Cluster: ``redis+cluster://host:port`` is a seed node.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

#: Seconds redis-py may take at least to open a connection: generous, since redis-py
#: times a connect by the wall clock, which a busy event loop runs fast; each command's
#: own budget bounds what Redis may take.
MIN_CONNECT_TIMEOUT = 5.0


class QueuedConnectionPool(BlockingConnectionPool):
    """A blocking pool whose wait for a free connection is no part of a call's budget:
    the wait is marked ``queueing()``, and ends once the pool hands a connection over to
    be connected (``connection_held()``), so connecting is the server's time again. The
    wait keeps a bound (``QueueTimeout``, after 20 budgets), so a call never hangs."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        """A connection, waiting for one to be free if need be (not counted as server time)."""
        # One free: nothing to wait for (but the pool's lock, held for a moment).
        free = self.can_get_connection()
        waiting: AbstractContextManager[None] = nullcontext() if free else queueing()
        with waiting:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        """Connect ``connection`` if it is not: counted as server time again, with an
        allowance for the connecting (``connecting()``)."""
        connection_held()
        if not connection.is_connected:
            connecting()
        await super().ensure_connection(connection)


def check_prefix(prefix: object, *, cluster: bool) -> str:
    """``prefix``, if it can prefix this cache's keys.

    Raises:
        ConfigurationError: not a non-empty str (an empty prefix would make ``clear()``
            delete every key in the database), or on a cluster a brace in it (it would
            move the hash tag off the cache key, and an entry and its lease, touched by
            one script, could land on different slots).
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(f"RedisCache.prefix: expected a non-empty str, got {prefix!r}")
    if cluster and ("{" in prefix or "}" in prefix):
        raise ConfigurationError(
            f"RedisCache.prefix: no braces on a cluster (keys are hash-tagged), got {prefix!r}"
        )
    return prefix


def redis_client(
    url: str | None,
    client: object,
    *,
    cluster: object,
    settings: RemoteSettings,
) -> RedisClient:
    """The client a ``RedisCache`` talks through: ``client`` checked, or one built for
    ``url`` (exactly one of them).

    Raises:
        ConfigurationError: neither or both, ``cluster`` not a bool, an unusable URL or
            client.
    """
    if not isinstance(cluster, bool):
        raise ConfigurationError(f"RedisCache.cluster: expected a bool, got {cluster!r}")
    check_source("RedisCache", url, client)
    if url is None:
        return check_lent_client(client, cluster=cluster)
    return client_from_url(
        url,
        cluster=cluster,
        connect_timeout=max(settings.read_timeout, settings.write_timeout, MIN_CONNECT_TIMEOUT),
        max_connections=settings.max_connections,
    )


def check_lent_client(client: object, *, cluster: bool) -> RedisClient:
    """``client``, if the cache can use it.

    Raises:
        ConfigurationError: not a ``redis.asyncio`` ``Redis`` or ``RedisCluster``, one
            that decodes responses (the cache stores bytes), or a plain Redis where a
            cluster was asked for.
    """
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
    return client


def client_from_url(
    url: str, *, cluster: bool, connect_timeout: float, max_connections: int
) -> RedisClient:
    """A client for ``url`` (a ``RedisCluster`` for a ``+cluster`` scheme or ``cluster``).

    Raises:
        ConfigurationError: redis-py cannot use the URL (its message never quotes the
            password).
    """
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
        # The caller's own budget bounds the wait for a free connection, apart from the
        # server's time (QueuedConnectionPool).
        pool = QueuedConnectionPool.from_url(url, timeout=None, **options)
    except (ValueError, TypeError, RedisClusterException) as exc:
        # redis-py's messages quote the scheme or an option, but urllib's (a netloc that
        # fails its NFKC check) quote the netloc, password and all: scrubbed of it, and
        # not chained (a traceback would print the original).
        message = scrub(str(exc), url_secrets(url))
        raise ConfigurationError(f"RedisCache.url: {message}") from None
    return Redis.from_pool(pool)


def describe_server(client: RedisClient) -> str:
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


async def close_owned_client(client: RedisClient, where: str) -> None:
    """Close a client the cache built, and every connection it holds.

    Raises:
        CacheUnavailableError: closing failed (naming ``where``, never credentials).
    """
    try:
        await client.aclose()
        if isinstance(client, RedisCluster):
            # redis-py's aclose() closes nothing while a topology refresh is pending
            # (after a node failed): close every node's connections.
            await client.nodes_manager.aclose()
            await client.nodes_manager.aclose("startup_nodes")
    except Exception as exc:
        raise CacheUnavailableError(
            f"closing the connection pool to {where} failed: {exc}"
        ) from exc

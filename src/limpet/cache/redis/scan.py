"""How ``RedisCache.clear()`` removes its keys: SCAN + UNLINK on one server or on every
primary of a cluster, matching the cache's prefix and nothing else."""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from limpet.cache.redis.writes import RedisClient

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = ["SCAN_COUNT", "glob_escape", "is_own_key", "scan_step", "unlink_prefix"]

#: SCAN hint: large enough to be quick, small enough to keep each step short.
SCAN_COUNT = 1_000


async def unlink_prefix(cache: RedisCache) -> None:
    """Remove every key under ``cache.prefix`` that is the cache's own (``is_own_key``)
    but its generation counters, through the cache's ``run()`` (so its breaker and write
    timeout apply to each step).

    Raises:
        CacheUnavailableError: Redis is down, slow, the breaker is open, or closed.
    """
    client = cache.redis
    pattern = glob_escape(cache.prefix) + "*"
    prefix = cache.prefix.encode()
    keep = cache.generation_key("").encode()
    for node in await _primaries(cache):
        cursor = 0
        while True:
            cursor, keys = await cache.run(
                "SCAN", cache.write_timeout, partial(scan_step, client, node, cursor, pattern)
            )
            doomed = [
                key
                for key in keys
                if not _as_bytes(key).startswith(keep) and is_own_key(prefix, _as_bytes(key))
            ]
            if doomed:
                await cache.run("UNLINK", cache.write_timeout, partial(client.unlink, *doomed))
            if cursor == 0:
                break


# What a cache writes under its prefix: entries (chat and embeddings), their flight leases,
# the affinity map and the fleet counters; on a cluster, a key's hash tag in braces.
_KINDS = rb"(?:lock:)?\{?[0-9a-f]{64}\}?|\{?(?:affinity:.*|stats-models|stats:.*)\}?"
_OWN = re.compile(_KINDS, re.DOTALL)
# The same kinds, and generation counters, after more of a prefix: another cache's.
_EXTENDED = re.compile(rb".+?(?:" + _KINDS + rb"|gen:.*|\{gen\}:.*)", re.DOTALL)


def is_own_key(prefix: bytes, key: bytes) -> bool:
    """Whether ``key``, which starts with ``prefix``, is this cache's to remove: one of
    the kinds it writes, or one no cache writes (set by hand), but never one of those
    kinds after more of a prefix: that is a cache whose prefix extends this one's
    (``"limpet:"`` and ``"limpet:tenant-b:"``), whose ``clear()`` this is not.

    Example:
        >>> mine, theirs = b"app:" + b"ab" * 32, b"app:b:" + b"ab" * 32
        >>> is_own_key(b"app:", mine), is_own_key(b"app:", theirs), is_own_key(b"app:", b"app:x")
        (True, False, True)
    """
    start = len(prefix)
    return _OWN.fullmatch(key, start) is not None or _EXTENDED.fullmatch(key, start) is None


async def _primaries(cache: RedisCache) -> list[ClusterNode | None]:
    """Where to scan: every primary of a cluster, or the one server (None)."""
    client = cache.redis
    if not isinstance(client, RedisCluster):
        return [None]
    # The node map is known only once the client has asked the cluster for it.
    await cache.run("CLUSTER SLOTS", cache.write_timeout, client.initialize)
    return list(client.get_primaries())


async def scan_step(
    client: RedisClient, node: ClusterNode | None, cursor: int, pattern: str
) -> tuple[int, list[Any]]:
    """One SCAN step from ``cursor`` on ``node`` (None: the one server): the next cursor
    (0 when done) and the keys matching ``pattern``."""
    if node is None or not isinstance(client, RedisCluster):
        assert isinstance(client, Redis)
        step: tuple[int, list[Any]] = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
        return step
    # A cluster client answers a SCAN with a cursor per node it asked.
    reply: Any = await client.scan(cursor, match=pattern, count=SCAN_COUNT, target_nodes=node)
    cursors, keys = reply
    return int(cursors[node.name]), list(keys)


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix matches only itself.

    Example:
        >>> glob_escape("app[1]:*")
        'app\\\\[1\\\\]:\\\\*'
    """
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _as_bytes(key: bytes | str) -> bytes:
    return key if isinstance(key, bytes) else key.encode()

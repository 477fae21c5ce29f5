"""The item commands ``MemcachedCache`` runs with an ``emcache`` client (each through
``MemcachedCache.run`` or its write queue, never on their own)."""

from __future__ import annotations

import contextlib
import time

import emcache

from limpet.cache.memcached.keys import memcached_expiry

__all__ = ["delete_key", "get_value", "get_values", "write_item"]


async def get_value(client: emcache.Client, key: bytes) -> bytes | None:
    """The value of ``key``, or None (absent)."""
    item = await client.get(key)
    return None if item is None else bytes(item.value)


async def get_values(client: emcache.Client, keys: list[bytes]) -> list[bytes | None]:
    """The values of ``keys``, in order (None: absent), in one multi-key get per server."""
    found = await client.get_many(keys)
    return [None if (item := found.get(key)) is None else bytes(item.value) for key in keys]


async def write_item(
    client: emcache.Client, key: bytes, value: bytes | None, expires_at: float
) -> Exception | None:
    """Store ``value`` under ``key`` until ``expires_at`` (monotonic), or delete ``key``
    (no value, or expired already); None, or Memcached's refusal."""
    ttl = expires_at - time.monotonic()
    try:
        if value is None or ttl <= 0:
            await delete_key(client, key)
        else:
            await client.set(key, value, exptime=memcached_expiry(ttl, time.time()))
    except emcache.CommandError as exc:
        return exc  # Memcached refused it (too large, out of memory): it is up
    return None


async def delete_key(client: emcache.Client, key: bytes) -> None:
    """Delete ``key``; absent is fine."""
    with contextlib.suppress(emcache.NotFoundCommandError):
        await client.delete(key)

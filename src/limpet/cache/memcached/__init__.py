"""The Memcached tier (needs the ``memcached`` extra): the backend, its keys, writes,
generation counters and the leases of cross-process single-flight."""

from limpet.cache.memcached.backend import MemcachedCache

__all__ = ["MemcachedCache"]

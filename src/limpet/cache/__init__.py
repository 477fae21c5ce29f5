"""Response cache backends and the tier that composes them.

``RedisCache`` needs the ``redis`` extra and ``MemcachedCache`` the ``memcached`` extra;
each is imported on first use so that ``import limpet`` requires neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from limpet._extras import import_extra as _import_extra
from limpet.cache.base import CacheBackend, CacheEntry, EntryCodec
from limpet.cache.capabilities import TierCapabilities
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache, TierStats

if TYPE_CHECKING:
    from limpet.cache.memcached.backend import MemcachedCache
    from limpet.cache.redis.backend import RedisCache

__all__ = [
    "CacheBackend",
    "CacheEntry",
    "EntryCodec",
    "MemcachedCache",
    "MemoryCache",
    "RedisCache",
    "TierCapabilities",
    "TierStats",
    "TieredCache",
]


def __getattr__(name: str) -> Any:
    if name == "RedisCache":
        return _import_extra("limpet.cache.redis.backend", name, extra="redis", needs=("redis",))
    if name == "MemcachedCache":
        return _import_extra(
            "limpet.cache.memcached.backend", name, extra="memcached", needs=("emcache",)
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

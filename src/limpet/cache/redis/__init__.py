"""The Redis tier (needs the ``redis`` extra): the backend, its batched reads and pipelined
writes, and the leases of cross-process single-flight."""

from limpet.cache.redis.backend import RedisCache

__all__ = ["RedisCache"]

"""The generation counters of a ``RedisCache``: plain integers under
``generation_key(name)``, read together in one MGET and bumped with INCR; they never
expire (see ``limpet.cache.generations`` for what they are for)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from limpet.errors import CacheUnavailableError

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = ["bump_generation", "read_generations"]


async def read_generations(cache: RedisCache, names: Sequence[str]) -> list[int]:
    """The current value of each counter (0 when never bumped), in one MGET.

    Raises:
        CacheUnavailableError: Redis is down, slow, the breaker is open, or a counter
            holds something other than an integer.
    """
    keys = [cache.generation_key(name) for name in names]
    values = await cache.run("MGET", cache.read_timeout, partial(cache.redis.mget, keys))
    result = []
    for name, value in zip(names, values, strict=True):
        try:
            result.append(0 if value is None else int(value))
        except ValueError as exc:
            raise CacheUnavailableError(
                f"redis generation {name!r} is not an integer: {value!r}"
            ) from exc
    return result


async def bump_generation(cache: RedisCache, name: str) -> int:
    """Add one to counter ``name``; the new value.

    Raises:
        CacheUnavailableError: Redis is down, slow, or the breaker is open.
    """
    key = cache.generation_key(name)
    result: int = await cache.run("INCR", cache.write_timeout, partial(cache.redis.incr, key))
    return result

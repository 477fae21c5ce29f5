"""The generation counters of a ``RedisCache``: integers under ``generation_key(name)``,
read together in one MGET and bumped with INCR; they never expire (see
``limpet.cache.generations`` for what they are for).

Redis may still lose one: evicted under an ``allkeys-*`` policy, or gone in a restart
without persistence or a FLUSHALL. A missing counter is created above every value it had
(``limpet.cache.counter_starts.CounterStarts``), never read as 0: processes that kept an old
value would otherwise miss every invalidation until the counter climbed past it, and
entries written under its early values would be read again.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from limpet.cache.counter_starts import CounterStarts
from limpet.errors import CacheUnavailableError

if TYPE_CHECKING:
    from limpet.cache.redis.backend import RedisCache

__all__ = ["bump_generation", "read_generations"]

# KEYS: missing counters; ARGV: where each starts. Creates those still missing (another
# process may have created one meanwhile: its value stands) and returns every value.
_CREATE = """
local values = {}
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i], 'NX')
  values[i] = redis.call('GET', key)
end
return values
"""
# KEYS[1]: a counter found below a value some process held (lost, and re-created lower);
# ARGV[1]: that value plus one. Raised to it unless already at or above it (never lowered).
_RAISE = """
local held = redis.call('GET', KEYS[1])
if not held or tonumber(held) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""
# KEYS[1]: the counter; ARGV[1]: where it starts if it is missing.
_BUMP = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])
"""


async def read_generations(
    cache: RedisCache, starts: CounterStarts, names: Sequence[str]
) -> list[int]:
    """The current value of each counter, in one MGET; those missing are created first
    (one more round trip).

    Raises:
        CacheUnavailableError: Redis is down, slow, the breaker is open, or a counter
            holds something other than an integer.
    """
    keys = [cache.generation_key(name) for name in names]
    values = _replies(
        keys, await cache.run("MGET", cache.read_timeout, partial(cache.redis.mget, keys))
    )
    missing = [i for i, value in enumerate(values) if value is None]
    if missing:
        args = [*(keys[i] for i in missing), *(str(starts.start(names[i])) for i in missing)]
        created = _replies(
            missing,
            await cache.run(
                "EVAL generations",
                cache.write_timeout,
                partial(cache.redis.eval, _CREATE, len(missing), *args),
            ),
        )
        for i, value in zip(missing, created, strict=True):
            values[i] = value
    return [
        await _at_least_seen(cache, starts, name, _counter(name, value))
        for name, value in zip(names, values, strict=True)
    ]


async def bump_generation(cache: RedisCache, starts: CounterStarts, name: str) -> int:
    """Add one to counter ``name`` (created first when missing); the new value.

    Raises:
        CacheUnavailableError: Redis is down, slow, the breaker is open, or the counter
            holds something other than an integer.
    """
    key = cache.generation_key(name)
    result = await cache.run(
        "EVAL bump",
        cache.write_timeout,
        partial(cache.redis.eval, _BUMP, 1, key, str(starts.start(name))),
    )
    return await _at_least_seen(cache, starts, name, _counter(name, result))


async def _at_least_seen(cache: RedisCache, starts: CounterStarts, name: str, value: int) -> int:
    """``value``, read from counter ``name``, or, when it is below a value this process
    saw (``CounterStarts.floor``), what the counter holds once raised above that."""
    floor = starts.floor(name, value)
    if floor is not None:
        raised = await cache.run(
            "EVAL raise generation",
            cache.write_timeout,
            partial(cache.redis.eval, _RAISE, 1, cache.generation_key(name), str(floor)),
        )
        value = _counter(name, raised)
    return starts.saw(name, value)


def _replies(asked: Sequence[object], values: object) -> list[Any]:
    """``values``, when they are one reply for each of ``asked``.

    Raises:
        CacheUnavailableError: anything else (no server's answer to these keys: a
            proxy's, say).
    """
    if not isinstance(values, list | tuple) or len(values) != len(asked):
        raise CacheUnavailableError(
            f"redis answered {type(values).__name__} for {len(asked)} generation counters"
        )
    return list(values)


def _counter(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CacheUnavailableError(
            f"redis generation {name!r} is not an integer: {value!r}"
        ) from exc

"""Microseconds per Redis-tier hit through ``client.complete`` with no in-process tier
(``Client(cache=RedisCache...)``) for the ~2 KB request of ``hit_path``, beside the floor
measured on the same server in the same run: a raw ``redis.asyncio`` GET of the entry's
bytes (no socket timeout: the cheapest raw GET) plus ``EntryCodec().decode``.

Target: <= 1.3x the floor.
"""

from __future__ import annotations

import asyncio

import redis.asyncio

from benchmarks import _tier_hit
from benchmarks._harness import Call, command_line, scratch_prefix
from limpet import RedisCache
from limpet.cache.base import EntryCodec

FLOOR = "floor: redis.asyncio GET + EntryCodec.decode"


async def main(url: str, n: int, rounds: int) -> None:
    # No socket timeout: redis-py 8 defaults to 5 s, which wraps every send in
    # asyncio.wait_for (a task per command on Python 3.11) and arms a timer per read, a
    # third of what the floor cost: not what a GET must cost. The floor is the cheapest.
    raw = redis.asyncio.Redis.from_url(url, socket_timeout=None)
    codec = EntryCodec()
    try:
        async with scratch_prefix(url, "redis_hit") as prefix:
            cache = RedisCache.from_url(url, prefix=prefix)

            async def floor_for(key: str) -> tuple[Call, int]:
                redis_key = cache.redis_key(key)
                stored = await raw.get(redis_key)
                assert stored is not None

                # The floor: what any Redis-backed cache must do for a hit.
                async def floor() -> object:
                    data = await raw.get(redis_key)
                    assert isinstance(data, bytes)
                    return codec.decode(key, data)

                return floor, len(stored)

            plain_cache = RedisCache.from_url(url, prefix=prefix)
            hit = await _tier_hit.measure(cache, plain_cache, floor_for, n, rounds)
    finally:
        await raw.aclose()
    _tier_hit.report("redis_hit", "Redis", FLOOR, hit, n, rounds)


if __name__ == "__main__":
    args = command_line(__doc__, redis=True).parse_args()
    asyncio.run(main(args.redis, *((300, 3) if args.quick else (3000, 7))))

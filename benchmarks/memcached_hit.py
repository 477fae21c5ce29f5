"""Microseconds per Memcached-tier hit through ``client.complete`` with no in-process tier
(``Client(cache=MemcachedCache...)``) for the ~2 KB request of ``hit_path``, beside the
floor measured on the same server in the same run: a raw ``emcache`` get of the entry's
bytes plus ``EntryCodec().decode``.

Target: <= 1.3x the floor.
"""

from __future__ import annotations

import asyncio

import emcache

from benchmarks import _tier_hit
from benchmarks._harness import Call, command_line, scratch_prefix
from benchmarks._memcached import memcached_url
from limpet import MemcachedCache
from limpet.cache.base import EntryCodec
from limpet.cache.memcached.backend import parse_memcached_url

FLOOR = "floor: emcache get + EntryCodec.decode"


async def main(url: str, n: int, rounds: int) -> None:
    host, port = parse_memcached_url(url)[0]
    # The fastest way emcache offers: no per-call timer of its own.
    raw = await emcache.create_client([emcache.MemcachedHostAddress(host, port)], timeout=None)
    codec = EntryCodec()
    try:
        async with scratch_prefix(url, "memcached_hit") as prefix:
            cache = MemcachedCache.from_url(url, prefix=prefix)

            async def floor_for(key: str) -> tuple[Call, int]:
                stored = await raw.get(cache.entry_key(key))
                assert stored is not None

                # The floor: what any Memcached-backed cache must do for a hit.
                async def floor() -> object:
                    item = await raw.get(cache.entry_key(key))
                    assert item is not None
                    return codec.decode(key, item.value)

                return floor, len(stored.value)

            plain_cache = MemcachedCache.from_url(url, prefix=prefix)
            hit = await _tier_hit.measure(cache, plain_cache, floor_for, n, rounds)
    finally:
        await raw.close()
    _tier_hit.report("memcached_hit", "Memcached", FLOOR, hit, n, rounds)


if __name__ == "__main__":
    args = command_line(__doc__, memcached=True).parse_args()
    with memcached_url(args.memcached) as url:
        asyncio.run(main(url, *((300, 3) if args.quick else (3000, 7))))

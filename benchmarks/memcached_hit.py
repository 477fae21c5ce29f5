"""Microseconds per Memcached-tier hit through ``client.complete`` with no in-process tier
(``Client(cache=MemcachedCache...)``) for the ~2 KB request of ``hit_path``, beside the
floor measured on the same server in the same run: a raw ``emcache`` get of the entry's
bytes plus ``EntryCodec().decode``.

Target: <= 1.3x the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import emcache
import orjson

from benchmarks._common import Figure, emit
from benchmarks._memcached import memcached_url
from benchmarks.hit_path import request
from benchmarks.redis_hit import interleaved_us
from limpet import CacheStatus, Client, Endpoint, MemcachedCache
from limpet.cache.base import EntryCodec
from limpet.cache.memcached.backend import parse_memcached_url
from limpet.testing import FakeGateway

TARGET_RATIO = 1.3


async def main(url: str, n: int, rounds: int) -> None:
    body = request()
    prefix = f"limpet-bench:{uuid.uuid4().hex[:12]}:"
    host, port = parse_memcached_url(url)[0]
    # The fastest way emcache offers: no per-call timer of its own.
    raw = await emcache.create_client([emcache.MemcachedHostAddress(host, port)], timeout=None)
    codec = EntryCodec()
    try:
        async with FakeGateway(endpoints=("a",)) as gateway:
            endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-bench")
            cache = MemcachedCache.from_url(url, prefix=prefix)
            plain_cache = MemcachedCache.from_url(url, prefix=prefix)
            async with (
                Client(endpoints=[endpoint], cache=cache) as client,
                Client(endpoints=[endpoint], cache=plain_cache, coalesce=False) as plain,
            ):
                first = await client.complete(**body)
                assert first.cache is CacheStatus.MISS and first.key is not None
                await cache.flush()
                assert (await client.complete(**body)).cache is CacheStatus.HIT
                assert (await plain.complete(**body)).cache is CacheStatus.HIT
                key = first.key
                stored = await raw.get(cache.entry_key(key))
                assert stored is not None

                async def hit() -> object:
                    return await client.complete(**body)

                async def hit_without_coalescing() -> object:
                    return await plain.complete(**body)

                # The floor: what any Memcached-backed cache must do for a hit.
                async def floor() -> object:
                    item = await raw.get(cache.entry_key(key))
                    assert item is not None
                    return codec.decode(key, item.value)

                contenders = {
                    "limpet": hit,
                    "limpet_no_coalescing": hit_without_coalescing,
                    "floor": floor,
                }
                await interleaved_us(contenders, max(n // 10, 10), 1)  # warm up
                us = await interleaved_us(contenders, n, rounds)
                assert gateway.total_calls == 1
                assert cache.breaker_state == "closed"
    finally:
        await raw.close()

    ratio = us["limpet"] / us["floor"]
    emit(
        "memcached_hit",
        [
            Figure(
                figure="Memcached-tier hit, us per call (~2 KB request, no L1)",
                unit="us",
                limpet=us["limpet"],
                baseline=us["floor"],
                baseline_name="floor: emcache get + EntryCodec.decode",
                target=f"<= {TARGET_RATIO}x floor",
                met=ratio <= TARGET_RATIO,
            ),
            Figure(
                figure="Memcached-tier hit with coalescing off, us per call",
                unit="us",
                limpet=us["limpet_no_coalescing"],
                baseline=us["floor"],
                baseline_name="floor: emcache get + EntryCodec.decode",
            ),
        ],
        calls_per_round=n,
        rounds=rounds,
        request_bytes=len(orjson.dumps(body)),
        entry_bytes=len(stored.value),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--memcached", default=None, help="default: $LIMPET_MEMCACHED_URL")
    args = parser.parse_args()
    with memcached_url(args.memcached) as url:
        if args.quick:
            asyncio.run(main(url, 300, 3))
        else:
            asyncio.run(main(url, 3000, 7))

"""Microseconds per Redis-tier hit through ``client.complete`` with no in-process tier
(``Client(cache=RedisCache...)``) for the ~2 KB request of ``hit_path``, beside the floor
measured on the same server in the same run: a raw ``redis.asyncio`` GET of the entry's
bytes plus ``EntryCodec().decode``.

Target: <= 1.3x the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

import orjson
import redis.asyncio

from benchmarks._common import Figure, emit
from benchmarks.hit_path import request
from limpet import CacheStatus, Client, Endpoint, RedisCache
from limpet.cache.base import EntryCodec
from limpet.testing import FakeGateway

TARGET_RATIO = 1.3


async def interleaved_us(
    calls: Mapping[str, Callable[[], Awaitable[object]]], n: int, rounds: int
) -> dict[str, float]:
    """Median over ``rounds`` of the mean microseconds per call of ``n`` sequential calls,
    each round timing every contender in turn, so a noisy moment hits all of them."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(n):
                await call()
            samples[name].append((time.perf_counter() - started) / n * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


async def main(url: str, n: int, rounds: int) -> None:
    body = request()
    prefix = f"limpet-bench:{uuid.uuid4().hex[:12]}:"
    raw = redis.asyncio.Redis.from_url(url)
    codec = EntryCodec()
    try:
        async with FakeGateway(endpoints=("a",)) as gateway:
            endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-bench")
            cache = RedisCache.from_url(url, prefix=prefix)
            plain_cache = RedisCache.from_url(url, prefix=prefix)
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
                redis_key = cache.redis_key(key)
                stored = await raw.get(redis_key)
                assert stored is not None

                async def hit() -> object:
                    return await client.complete(**body)

                async def hit_without_coalescing() -> object:
                    return await plain.complete(**body)

                # The floor: what any Redis-backed cache must do for a hit.
                async def floor() -> object:
                    data = await raw.get(redis_key)
                    assert isinstance(data, bytes)
                    return codec.decode(key, data)

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
        keys = [k async for k in raw.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await raw.unlink(*keys)
        await raw.aclose()

    ratio = us["limpet"] / us["floor"]
    emit(
        "redis_hit",
        [
            Figure(
                figure="Redis-tier hit, us per call (~2 KB request, no L1)",
                unit="us",
                limpet=us["limpet"],
                baseline=us["floor"],
                baseline_name="floor: redis.asyncio GET + EntryCodec.decode",
                target=f"<= {TARGET_RATIO}x floor",
                met=ratio <= TARGET_RATIO,
            ),
            Figure(
                figure="Redis-tier hit with coalescing off, us per call",
                unit="us",
                limpet=us["limpet_no_coalescing"],
                baseline=us["floor"],
                baseline_name="floor: redis.asyncio GET + EntryCodec.decode",
            ),
        ],
        calls_per_round=n,
        rounds=rounds,
        request_bytes=len(orjson.dumps(body)),
        entry_bytes=len(stored),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument(
        "--redis", default=os.environ.get("LIMPET_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main(args.redis, 300, 3))
    else:
        asyncio.run(main(args.redis, 3000, 7))

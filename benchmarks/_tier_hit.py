"""A shared cache tier's hit through ``client.complete``, with no in-process tier, beside
that tier's floor (a raw get of the entry's bytes plus ``EntryCodec().decode``), timed in
turns: what ``redis_hit`` and ``memcached_hit`` both measure, each on its own server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from benchmarks._common import Figure, emit
from benchmarks._harness import Call, endpoint_of, interleaved_us
from benchmarks.hit_path import request
from limpet import CacheStatus, Client, MemcachedCache, RedisCache
from limpet.testing import FakeGateway

TARGET_RATIO = 1.3

# Given the stored entry's key: the floor's call, and the size of the entry it reads.
FloorFor = Callable[[str], Awaitable[tuple[Call, int]]]


@dataclass(frozen=True, slots=True)
class TierHit:
    """Microseconds per call of ``limpet``, ``limpet_no_coalescing`` and ``floor``."""

    us: dict[str, float]
    entry_bytes: int


async def measure(
    cache: RedisCache | MemcachedCache,
    plain_cache: RedisCache | MemcachedCache,
    floor_for: FloorFor,
    n: int,
    rounds: int,
) -> TierHit:
    """One entry stored through ``cache``, then read back through a Client on ``cache``
    and one on ``plain_cache`` (coalescing off) in turns with the floor."""
    body = request()
    async with FakeGateway(endpoints=("a",)) as gateway:
        endpoint = endpoint_of(gateway)
        async with (
            Client(endpoints=[endpoint], cache=cache) as client,
            Client(endpoints=[endpoint], cache=plain_cache, coalesce=False) as plain,
        ):
            first = await client.complete(**body)
            assert first.cache is CacheStatus.MISS and first.key is not None
            await cache.flush()
            assert (await client.complete(**body)).cache is CacheStatus.HIT
            assert (await plain.complete(**body)).cache is CacheStatus.HIT
            floor, entry_bytes = await floor_for(first.key)

            async def hit() -> object:
                return await client.complete(**body)

            async def hit_without_coalescing() -> object:
                return await plain.complete(**body)

            contenders: dict[str, Call] = {
                "limpet": hit,
                "limpet_no_coalescing": hit_without_coalescing,
                "floor": floor,
            }
            await interleaved_us(contenders, max(n // 10, 10), 1)  # warm up
            us = await interleaved_us(contenders, n, rounds)
            assert gateway.total_calls == 1
            assert cache.breaker_state == "closed"
    return TierHit(us, entry_bytes)


def report(name: str, tier: str, floor_name: str, hit: TierHit, n: int, rounds: int) -> None:
    """Emit ``name``'s figures: the hit beside its floor, with coalescing on and off."""
    us = hit.us
    emit(
        name,
        [
            Figure(
                figure=f"{tier}-tier hit, us per call (~2 KB request, no L1)",
                unit="us",
                limpet=us["limpet"],
                baseline=us["floor"],
                baseline_name=floor_name,
                target=f"<= {TARGET_RATIO}x floor",
                met=us["limpet"] / us["floor"] <= TARGET_RATIO,
            ),
            Figure(
                figure=f"{tier}-tier hit with coalescing off, us per call",
                unit="us",
                limpet=us["limpet_no_coalescing"],
                baseline=us["floor"],
                baseline_name=floor_name,
            ),
        ],
        calls_per_round=n,
        rounds=rounds,
        request_bytes=len(orjson.dumps(request())),
        entry_bytes=hit.entry_bytes,
    )

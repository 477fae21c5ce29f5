"""Latency per call with the Redis tier down (a dead port) beside memory only, in one run:
the same mix of cache hits and misses against a FakeGateway with no latency, each request
sent to both clients in turn, so both see the same noise.

Target: p99 added by the dead Redis <= 1 ms, and 0 failed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import time
from typing import Any
from urllib.parse import urlsplit

from benchmarks._common import Figure, emit
from limpet import Client, Endpoint, MemoryCache, RedisCache, TieredCache
from limpet.testing import FakeGateway

MODEL = "anthropic/claude-sonnet-4.6"
TARGET_ADDED_P99_MS = 1.0


def dead_url(url: str) -> str:
    """``url``'s host on a port nothing listens on (bound, then released)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"redis://{host}:{port}/0"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def workload(calls: int, distinct: int, seed: int = 7) -> list[dict[str, Any]]:
    """Requests drawn from ``distinct`` prompts: the first sight of each is a miss, the
    rest are hits."""
    rng = random.Random(seed)
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"question {rng.randrange(distinct)}"}],
            "temperature": 0,
        }
        for _ in range(calls)
    ]


async def main(redis_url: str, calls: int, distinct: int) -> None:
    requests = workload(calls, distinct)
    down_ms: list[float] = []
    memory_ms: list[float] = []
    errors = {"redis_down": 0, "memory_only": 0}
    async with FakeGateway(endpoints=("a",)) as gateway:
        endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-bench")
        down_cache = RedisCache.from_url(dead_url(redis_url), prefix="limpet-bench-down:")
        async with (
            Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), down_cache)) as down,
            Client(endpoints=[endpoint], cache=MemoryCache()) as memory,
        ):
            clients = (("redis_down", down, down_ms), ("memory_only", memory, memory_ms))
            for body in requests:
                for name, client, samples in clients:
                    started = time.perf_counter()
                    try:
                        await client.complete(**body)
                    except Exception:
                        errors[name] += 1
                    samples.append((time.perf_counter() - started) * 1e3)
            breaker = down_cache.breaker_state
            hit_rate = down.stats.hit_rate
            cache_errors = down.stats.cache.errors
    added_p99 = percentile(down_ms, 0.99) - percentile(memory_ms, 0.99)
    emit(
        "redis_down",
        [
            Figure(
                figure="p99 per call, Redis tier down (hits and misses)",
                unit="ms",
                limpet=percentile(down_ms, 0.99),
                baseline=percentile(memory_ms, 0.99),
                baseline_name="memory only",
                target=f"<= +{TARGET_ADDED_P99_MS:g} ms",
                met=added_p99 <= TARGET_ADDED_P99_MS,
            ),
            Figure(
                figure="p50 per call, Redis tier down (hits and misses)",
                unit="ms",
                limpet=percentile(down_ms, 0.50),
                baseline=percentile(memory_ms, 0.50),
                baseline_name="memory only",
            ),
            Figure(
                figure="failed calls, Redis tier down",
                unit="calls",
                limpet=errors["redis_down"],
                baseline=errors["memory_only"],
                baseline_name="memory only",
                target="0",
                met=errors["redis_down"] == 0,
            ),
        ],
        calls=calls,
        distinct_requests=distinct,
        hit_rate=hit_rate,
        added_p99_ms=added_p99,
        mean_ms={
            "redis_down": statistics.fmean(down_ms),
            "memory_only": statistics.fmean(memory_ms),
        },
        breaker_state_at_end=breaker,
        cache_errors_absorbed=cache_errors,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument(
        "--redis",
        default=os.environ.get("LIMPET_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="only its host is used: the benchmark points at a dead port there",
    )
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main(args.redis, 400, 100))
    else:
        asyncio.run(main(args.redis, 4000, 1000))

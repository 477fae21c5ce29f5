"""Latency per call with the Redis tier down (a dead port) beside memory only, in one run:
the same mix of cache hits and misses against a FakeGateway with no latency, each request
sent to both clients in turn, so both see the same noise.

Target: p99 added by the dead Redis <= 1 ms, and 0 failed calls.
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks._common import Figure, emit
from benchmarks._harness import command_line, endpoint_of, percentile
from limpet import Client, MemoryCache, RedisCache, TieredCache
from limpet.testing import FakeGateway

MODEL = "anthropic/claude-sonnet-4.6"
TARGET_ADDED_P99_MS = 1.0
CLIENTS = ("redis_down", "memory_only")


def dead_url(url: str) -> str:
    """``url``'s host on a port nothing listens on (bound, then released)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"redis://{host}:{port}/0"


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


@dataclass
class Run:
    """Milliseconds per call and failed calls of each client, and the down one's state."""

    ms: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in CLIENTS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLIENTS, 0))
    breaker: str = ""
    hit_rate: float = 0.0
    cache_errors: int = 0


async def measure(redis_url: str, requests: list[dict[str, Any]]) -> Run:
    """Each request sent to the client with a dead Redis tier, then to the memory-only one."""
    run = Run()
    async with FakeGateway(endpoints=("a",)) as gateway:
        endpoint = endpoint_of(gateway)
        down_cache = RedisCache.from_url(dead_url(redis_url), prefix="limpet-bench-down:")
        async with (
            Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), down_cache)) as down,
            Client(endpoints=[endpoint], cache=MemoryCache()) as memory,
        ):
            clients = tuple(zip(CLIENTS, (down, memory), strict=True))
            for body in requests:
                for name, client in clients:
                    started = time.perf_counter()
                    try:
                        await client.complete(**body)
                    except Exception:
                        run.errors[name] += 1
                    run.ms[name].append((time.perf_counter() - started) * 1e3)
            run.breaker = down_cache.breaker_state
            run.hit_rate = down.stats.hit_rate
            run.cache_errors = down.stats.cache.errors
    return run


async def main(redis_url: str, calls: int, distinct: int) -> None:
    run = await measure(redis_url, workload(calls, distinct))
    down_ms, memory_ms = run.ms["redis_down"], run.ms["memory_only"]
    added_p99 = percentile(down_ms, 0.99) - percentile(memory_ms, 0.99)
    emit(
        "redis_down",
        figures(run, added_p99),
        calls=calls,
        distinct_requests=distinct,
        hit_rate=run.hit_rate,
        added_p99_ms=added_p99,
        mean_ms={name: statistics.fmean(run.ms[name]) for name in CLIENTS},
        breaker_state_at_end=run.breaker,
        cache_errors_absorbed=run.cache_errors,
    )


def figures(run: Run, added_p99: float) -> list[Figure]:
    down_ms, memory_ms = run.ms["redis_down"], run.ms["memory_only"]
    return [
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
            limpet=run.errors["redis_down"],
            baseline=run.errors["memory_only"],
            baseline_name="memory only",
            target="0",
            met=run.errors["redis_down"] == 0,
        ),
    ]


if __name__ == "__main__":
    only_host = "only its host is used: the benchmark points at a dead port there"
    args = command_line(__doc__, redis=True, redis_help=only_host).parse_args()
    if args.quick:
        asyncio.run(main(args.redis, 400, 100))
    else:
        asyncio.run(main(args.redis, 4000, 1000))

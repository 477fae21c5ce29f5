"""How a benchmark runs: its command line, its gateway endpoint, its clock and timers,
and its scratch space in a shared cache. What it prints is :mod:`benchmarks._common`'s.

A benchmark's ``__main__`` block is three lines::

    args = command_line(__doc__, redis=True).parse_args()
    asyncio.run(main(args.redis, *(SMALL if args.quick else FULL)))
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from limpet import Endpoint
from limpet.testing import FakeGateway

API_KEY = "sk-bench"  # what every benchmark's Client sends the FakeGateway
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_HELP = "default: $LIMPET_REDIS_URL, else " + DEFAULT_REDIS_URL

Call = Callable[[], Awaitable[object]]


def command_line(
    doc: str | None,
    *,
    quick_help: str = "a small, fast run",
    redis: bool = False,
    redis_help: str = REDIS_HELP,
    memcached: bool = False,
) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick`` (the runner passes it), and
    ``--redis URL`` / ``--memcached URL`` for those that need a server. A script adds its
    own sizes to the parser it gets."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if redis:
        default = os.environ.get("LIMPET_REDIS_URL", DEFAULT_REDIS_URL)
        parser.add_argument("--redis", default=default, help=redis_help)
    if memcached:
        parser.add_argument("--memcached", default=None, help="default: $LIMPET_MEMCACHED_URL")
    return parser


def endpoint_of(gateway: FakeGateway, name: str = "a", **options: Any) -> Endpoint:
    """The FakeGateway's endpoint ``name`` as a Client reaches it, with the bench key."""
    return Endpoint(name, gateway.base_url(name), api_key=API_KEY, **options)


class SimClock:
    """Simulated Unix time that moves only when told to; gateway and router read the same
    one, so cache TTLs act as they would over hours in a second of real time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def per_call_us(call: Call, n: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean microseconds per call of ``n`` sequential calls."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            await call()
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)


async def interleaved_us(calls: Mapping[str, Call], n: int, rounds: int) -> dict[str, float]:
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


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``samples``: the nearest sample, no interpolation."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def scratch_prefix(url: str, name: str) -> AsyncIterator[str]:
    """A key prefix of one benchmark run in the shared cache at ``url``. On Redis every
    key under it (entries, leases, generations, fleet counters: some have no TTL) is
    deleted when the block ends, so a benchmark leaves nothing behind in a shared Redis.
    Memcached cannot list keys to delete them: entries and leases expire by TTL, and the
    few generation counters stay until Memcached's LRU evicts them."""
    prefix = f"limpet-bench-{name}:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        if url.startswith(("redis://", "rediss://", "unix://")):
            await _delete_redis_prefix(url, prefix)


async def _delete_redis_prefix(url: str, prefix: str) -> None:
    import redis.asyncio  # the benchmarks run with the dev extras

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()

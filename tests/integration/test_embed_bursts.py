"""One large ``embed()`` on a healthy Redis: every vector stored, no lease left, the
breaker never opened, and another process finds them all.

A call of a thousand inputs used to run two thousand lease scripts at once, queued on
the connection pool, with that queueing charged to Redis's budget: the breaker opened
against a healthy local Redis, vectors were lost and leases left behind. Without
coalescing, its thousand writes overflowed the write queue in one tick and most were
dropped. Every test counts (breaker opens, tier errors, dropped writes, keys in Redis,
inputs sent upstream), never times.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from limpet import Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.flight import embeddings as flight_embeddings
from limpet.flight.embeddings import fetch_shared
from limpet.flight.shared import RedisFlight
from limpet.flight.store import FlightNotice, FlightStore, FlightWatch
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector

pytestmark = pytest.mark.redis

MODEL = "openai/text-embedding-3-small"
FAST_RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
# Enough to reproduce on two cores: the probe lost vectors from 1,000 inputs on.
BURST = 1_000


def client_on(gateway: FakeGateway, tier: RedisCache, **kwargs: object) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"))
    cache = TieredCache(MemoryCache(), tier)
    return Client(endpoints=[endpoint], cache=cache, retry=FAST_RETRY, **kwargs)  # type: ignore[arg-type]


def texts(n: int, prefix: str = "chunk") -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


async def keys_under(raw: redis.asyncio.Redis, pattern: str) -> int:
    return len([key async for key in raw.scan_iter(match=pattern, count=1000)])


async def entries_under(raw: redis.asyncio.Redis, prefix: str) -> int:
    """The entries under ``prefix``: neither leases, generation counters nor the fleet's
    counters (``limpet stats``)."""
    others = tuple((prefix + kind).encode() for kind in ("lock:", "gen:", "stats"))
    keys = [key async for key in raw.scan_iter(match=prefix + "*", count=1000)]
    return sum(1 for key in keys if not key.startswith(others))


async def test_one_call_of_a_thousand_inputs_stores_every_vector_and_leaves_no_lease(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    chunks = texts(BURST)
    tier = RedisCache.from_url(redis_url, prefix=redis_prefix)
    async with client_on(gateway, tier) as one:
        first = await one.embed(model=MODEL, input=chunks)
        errors = one.cache.stats.errors  # type: ignore[union-attr]
    assert first.misses == BURST
    assert tier.breaker.opens == 0
    assert errors == 0
    assert await keys_under(raw, redis_prefix + "lock:*") == 0
    assert await entries_under(raw, redis_prefix) == BURST
    gateway.embeddings.reset()
    async with client_on(gateway, RedisCache.from_url(redis_url, prefix=redis_prefix)) as two:
        again = await two.embed(model=MODEL, input=chunks)
    assert (again.hits, again.misses) == (BURST, 0)
    assert again.vectors == [fake_vector(MODEL, t) for t in chunks]
    assert gateway.embeddings.inputs == 0


async def test_a_burst_larger_than_the_write_queue_is_stored_whole_while_redis_is_healthy(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    """Without coalescing every vector goes through the write queue; ten times its bound
    in one call is fed in pieces it absorbs, and nothing is dropped."""
    chunks = texts(BURST)
    tier = RedisCache.from_url(redis_url, prefix=redis_prefix, max_pending_writes=BURST // 10)
    async with client_on(gateway, tier, coalesce=False) as one:
        await one.embed(model=MODEL, input=chunks)
    assert tier.dropped_writes == 0
    assert tier.failed_writes == 0
    assert tier.breaker.opens == 0
    assert await entries_under(raw, redis_prefix) == BURST
    gateway.embeddings.reset()
    async with client_on(
        gateway, RedisCache.from_url(redis_url, prefix=redis_prefix), coalesce=False
    ) as two:
        again = await two.embed(model=MODEL, input=chunks)
    assert (again.hits, again.misses) == (BURST, 0)
    assert gateway.embeddings.inputs == 0


class CountingStore:
    """A ``FlightStore`` that counts the lease scripts (acquire, release) running at once."""

    def __init__(self, store: FlightStore) -> None:
        self.store = store
        self.running = 0
        self.most = 0

    async def acquire(self, key: str, token: str, lease: float) -> bool:
        self._start()
        try:
            return await self.store.acquire(key, token, lease)
        finally:
            self.running -= 1

    async def release(
        self, key: str, token: str, notice: FlightNotice, entry: bytes | None, ttl: float
    ) -> None:
        self._start()
        try:
            await self.store.release(key, token, notice, entry, ttl)
        finally:
            self.running -= 1

    async def renew(self, key: str, token: str, lease: float) -> bool:
        return await self.store.renew(key, token, lease)

    async def holder(self, key: str) -> str | None:
        return await self.store.holder(key)

    async def take_over(self, key: str, seen: str, token: str, lease: float) -> bool:
        return await self.store.take_over(key, seen, token, lease)

    async def watch(self, key: str) -> FlightWatch:
        return await self.store.watch(key)

    def _start(self) -> None:
        self.running += 1
        self.most = max(self.most, self.running)


async def test_a_call_runs_a_bounded_number_of_lease_scripts_at_once(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes with overlapping inputs: each runs at most ``MAX_LEASE_SCRIPTS``
    lease scripts at once, though the inputs it follows wait meanwhile for the other
    one's, and every input still goes upstream once."""
    monkeypatch.setattr(flight_embeddings, "MAX_LEASE_SCRIPTS", 4, raising=False)
    sent: list[str] = []
    reading: list[str] = []  # the shared tier's reads in flight, leaders' and followers'
    most_reads = [0]

    def process() -> tuple[RedisCache, CountingStore]:
        tier = RedisCache.from_url(redis_url, prefix=redis_prefix)
        return tier, CountingStore(tier.flight_store)

    async def fetch(tier: RedisCache, store: CountingStore, keys: range) -> dict[str, bytes]:
        async def send(batch: list[tuple[str, str]]) -> dict[str, bytes | BaseException]:
            sent.extend(text for _, text in batch)
            return {key: text.encode() for key, text in batch}

        async def share(key: str, vector: bytes) -> tuple[bytes | None, float]:
            return vector, 60.0  # the release script stores it for the other process

        async def read(key: str) -> bytes | None:
            reading.append(key)
            most_reads[0] = max(most_reads[0], len(reading))
            try:
                return await tier.get(key)
            finally:
                reading.remove(key)

        inputs = {f"k{i}": f"text {i}" for i in keys}
        fetched = await fetch_shared(RedisFlight(store), inputs, send, read, share)
        assert not fetched.failed
        return fetched.vectors

    (one, one_store), (two, two_store) = process(), process()
    try:
        first, second = await asyncio.gather(
            fetch(one, one_store, range(0, 100)), fetch(two, two_store, range(50, 150))
        )
    finally:
        await one.aclose()
        await two.aclose()
    assert first == {f"k{i}": f"text {i}".encode() for i in range(0, 100)}
    assert second == {f"k{i}": f"text {i}".encode() for i in range(50, 150)}
    assert sorted(sent) == sorted(f"text {i}" for i in range(150))
    assert one_store.most <= 4 and two_store.most <= 4
    assert most_reads[0] <= 2 * 4  # each process's followers read within its places too
    assert await keys_under(raw, redis_prefix + "lock:*") == 0

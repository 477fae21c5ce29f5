"""RedisCache beyond the shared contract: keys, TTLs, generations, the write queue,
ownership, configuration and reprs. Against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

import pytest
import redis.asyncio
import redis.utils

from limpet.cache import MemoryCache, TieredCache
from limpet.cache.base import CacheEntry
from limpet.cache.redis.backend import DEFAULT_READ_TIMEOUT, DEFAULT_WRITE_TIMEOUT, RedisCache
from limpet.cache.redis.scan import glob_escape, is_own_key
from limpet.errors import CacheRejectedError, CacheUnavailableError, ConfigurationError
from limpet.models import Usage
from tests.redis_servers import RedisProxy, free_port


@pytest.fixture
async def cache(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisCache]:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        yield cache


def test_construction_needs_no_event_loop_and_no_server() -> None:
    cache = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert cache.breaker_state == "closed"
    assert cache.read_timeout == DEFAULT_READ_TIMEOUT
    assert cache.write_timeout == DEFAULT_WRITE_TIMEOUT
    asyncio.run(cache.aclose())


@pytest.mark.redis
async def test_construction_does_not_connect(redis_url: str, redis_prefix: str) -> None:
    async with RedisProxy.for_url(redis_url) as proxy:
        cache = RedisCache(url=proxy.url, prefix=redis_prefix)
        await asyncio.sleep(0)  # give a connection attempt every chance to show up
        assert proxy.accepted == 0
        assert await cache.get("k") is None
        assert proxy.accepted == 1
        await cache.aclose()


def test_the_tiered_caches_hmac_key_signs_the_redis_tiers_flight_notices() -> None:
    unkeyed = RedisCache.from_url("redis://127.0.0.1:1/0")
    own = RedisCache.from_url("redis://127.0.0.1:1/0", hmac_key=b"its own")
    TieredCache(MemoryCache(), unkeyed, own, hmac_key=b"fleet")
    assert unkeyed.hmac_key == b"fleet"  # one key for entries and notices
    assert own.hmac_key == b"its own"  # never overridden
    assert TieredCache(RedisCache.from_url("redis://127.0.0.1:1/0")).tiers[0].hmac_key is None  # type: ignore[attr-defined]


def test_a_tiered_cache_given_no_key_signs_entries_with_its_shared_tiers_key() -> None:
    # Regression: RedisCache(hmac_key=...) signed flight notices alone; under
    # Client(cache=RedisCache(...)) entries went unsigned, and a forged one was served.
    keyed = RedisCache.from_url("redis://127.0.0.1:1/0", hmac_key=b"fleet")
    assert TieredCache(MemoryCache(), keyed).hmac_key == b"fleet"
    assert TieredCache(keyed, hmac_key=b"given").hmac_key == b"given"
    other = RedisCache.from_url("redis://127.0.0.1:1/0", hmac_key=b"another")
    with pytest.raises(ConfigurationError, match="different hmac_keys"):
        TieredCache(MemoryCache(), keyed, other)


def test_hiredis_parses_replies() -> None:
    assert redis.utils.HIREDIS_AVAILABLE


@pytest.mark.redis
async def test_keys_carry_the_prefix_and_a_native_ttl(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    await cache.set("k", b"v", 30)
    await cache.flush()
    assert await raw.get(redis_prefix + "k") == b"v"
    assert await raw.get("k") is None
    assert 29_000 < await raw.pttl(redis_prefix + "k") <= 30_000


@pytest.mark.redis
async def test_sub_millisecond_ttl_still_stores(
    cache: RedisCache, raw: redis.asyncio.Redis
) -> None:
    await cache.set("k", b"v", 10)
    await cache.flush()
    await cache.set("k", b"v", 0.0001)
    await cache.flush()
    # PX is rounded up, never down to 0 (which Redis would reject).
    assert cache.failed_writes == 0


@pytest.mark.redis
async def test_an_infinite_ttl_sets_no_expiry(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    await cache.set("k", b"v", float("inf"))
    await cache.flush()
    assert await raw.pttl(redis_prefix + "k") == -1


@pytest.mark.redis
async def test_clear_removes_only_its_own_keys(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    # Glob characters in the prefix must match literally, not as a pattern.
    mine = redis_prefix + "a*[b]?:"
    lookalike = redis_prefix + "aXbY:"
    await raw.set(lookalike + "k", b"theirs")
    await raw.set(redis_prefix + "other", b"theirs")
    async with RedisCache.from_url(redis_url, prefix=mine) as cache:
        for i in range(2500):  # more than one SCAN step
            await raw.set(f"{mine}{i:064x}", b"v", px=60_000)
        bumped = await cache.bump_generation("model")
        await cache.clear()
        assert await raw.get(lookalike + "k") == b"theirs"
        assert await raw.get(redis_prefix + "other") == b"theirs"
        assert [k async for k in raw.scan_iter(match=glob_escape(mine) + "*")] == [
            (mine + "gen:model").encode()
        ]
        # Generations survive: resetting them could revive entries held elsewhere.
        assert await cache.generations(["model"]) == [bumped]


@pytest.mark.parametrize(
    ("rest", "own"),
    [
        ("ab" * 32, True),
        ("{" + "ab" * 32 + "}", True),  # on a cluster, hash-tagged
        ("lock:{" + "ab" * 32 + "}", True),
        ("{affinity:scope:link}", True),  # regression: left behind on a cluster
        ("{stats:openai/gpt-4.1}", True),
        ("{stats-models}", True),
        ("set-by-hand", True),
        ("b:" + "ab" * 32, False),  # a cache at "app:b:"
        ("b:{affinity:scope:link}", False),
        ("b:gen:m", False),
        ("b:{gen}:m", False),
    ],
)
def test_clear_takes_every_key_of_its_own_and_none_of_a_cache_under_it(
    rest: str, own: bool
) -> None:
    assert is_own_key(b"app:", b"app:" + rest.encode()) is own


@pytest.mark.redis
async def test_clear_leaves_the_keys_of_a_cache_whose_prefix_extends_its_own(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    # Regression: the SCAN pattern "limpet:*" took every key of "limpet:tenant-b:" too:
    # its entries, leases, affinity map and counters.
    key = "ab" * 32
    kinds = [key, "lock:" + key, "affinity:x:12", "stats-models", "stats:openai/gpt-4.1"]
    outer, inner = redis_prefix + "t:", redis_prefix + "t:b:"
    for prefix in (outer, inner):
        for kind in kinds:
            await raw.set(prefix + kind, b"v", px=60_000)
    await raw.set(outer + "set-by-hand", b"v", px=60_000)
    await raw.set(inner + "gen:m", b"7")
    async with RedisCache.from_url(redis_url, prefix=outer) as cache:
        await cache.clear()
    assert [await raw.exists(outer + kind) for kind in [*kinds, "set-by-hand"]] == [0] * 6
    assert [await raw.exists(inner + kind) for kind in [*kinds, "gen:m"]] == [1] * 6


@pytest.mark.redis
async def test_generations(cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str) -> None:
    assert await cache.generations([]) == []
    everything, a, b = await cache.generations(["*", "a", "b"])  # created, then read
    assert await cache.generations(["*", "a", "b"]) == [everything, a, b]
    assert await cache.bump_generation("a") == a + 1
    assert await cache.bump_generation("a") == a + 2
    assert await cache.bump_generation("*") == everything + 1
    assert await cache.generations(["*", "a", "b"]) == [everything + 1, a + 2, b]
    assert await raw.get(redis_prefix + "gen:a") == b"%d" % (a + 2)
    assert await raw.ttl(redis_prefix + "gen:a") == -1  # counters never expire


@pytest.mark.redis
@pytest.mark.parametrize("reply", [None, [], [b"1"], [b"1", b"2", b"3"]])
async def test_a_generations_reply_of_the_wrong_shape_is_a_cache_fault(
    cache: RedisCache, monkeypatch: pytest.MonkeyPatch, reply: object
) -> None:
    # What a proxy in front of Redis may answer. Regression: zip(strict=True) raised
    # ValueError out of the keying stage, and failed the user's call.
    async def answer(*keys: object) -> object:
        return reply

    monkeypatch.setattr(cache.redis, "mget", answer)
    with pytest.raises(CacheUnavailableError, match="for 2 generation counters"):
        await cache.generations(["*", "a"])


@pytest.mark.redis
async def test_a_counter_recreated_below_a_value_seen_is_raised_above_it(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    [held] = await cache.generations(["m"])
    # Lost, then re-created lower by a process whose clock is behind, and bumped there.
    await raw.set(redis_prefix + "gen:m", held - 60_000_000)
    [read] = await cache.generations(["m"])
    assert read == held + 1  # raised above what this process held: an invalidation
    assert await raw.get(redis_prefix + "gen:m") == b"%d" % (held + 1)
    await raw.set(redis_prefix + "gen:m", held - 60_000_000)
    assert await cache.bump_generation("m") == held + 2  # above the raised value
    await raw.set(redis_prefix + "gen:m", held + 100)  # another process raised it higher
    assert await cache.generations(["m"]) == [held + 100]  # never lowered


@pytest.mark.redis
async def test_a_garbage_generation_is_unavailable(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    await raw.set(redis_prefix + "gen:a", b"not a number")
    with pytest.raises(CacheUnavailableError, match="not an integer"):
        await cache.generations(["a"])
    with pytest.raises(CacheUnavailableError, match="refused"):
        await cache.bump_generation("a")
    assert cache.breaker_state == "closed"


@pytest.mark.redis
async def test_an_error_reply_does_not_open_the_breaker(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    await raw.rpush(redis_prefix + "k", b"a list, not a string")
    for _ in range(10):
        with pytest.raises(CacheUnavailableError, match="WRONGTYPE") as info:
            await cache.get("k")
        assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
    assert cache.breaker_state == "closed"
    assert cache.breaker.opens == 0


@pytest.mark.redis
async def test_set_returns_before_the_write_lands(
    cache: RedisCache, raw: redis.asyncio.Redis, redis_prefix: str
) -> None:
    await cache.set("k", b"v", 60)
    # Nothing has yielded to the writer yet: the value is queued, not sent.
    assert cache.pending_writes == 1
    await cache.flush()
    assert cache.pending_writes == 0
    assert await raw.get(redis_prefix + "k") == b"v"


@pytest.mark.redis
async def test_writes_beyond_the_bound_are_dropped_and_counted(
    redis_url: str, redis_prefix: str
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix, max_pending_writes=5) as cache:
        # No await yields to the writer in between, so the queue only grows.
        for i in range(20):
            await cache.set(f"k{i}", b"v", 60)
        await cache.set("k0", b"newer", 60)  # replaces a queued write: not a new one
        assert cache.pending_writes == 5
        assert cache.dropped_writes == 15
        await cache.flush()
        assert await cache.get("k0") == b"newer"
        assert [await cache.get(f"k{i}") for i in range(1, 5)] == [b"v"] * 4
        assert await cache.get("k5") is None
        assert cache.failed_writes == 0


@pytest.mark.redis
async def test_aclose_leaves_a_lent_client_open(redis_url: str, redis_prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        cache = RedisCache(client=client, prefix=redis_prefix)
        await cache.set("k", b"v", 60)
        await cache.aclose()
        # The pending write was flushed, and the client still works.
        assert await client.get(redis_prefix + "k") == b"v"
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_operations_after_aclose_are_unavailable(cache: RedisCache) -> None:
    await cache.aclose()
    with pytest.raises(CacheUnavailableError, match="closed"):
        await cache.get("k")
    with pytest.raises(CacheUnavailableError, match="closed"):
        await cache.set("k", b"v", 60)
    with pytest.raises(CacheUnavailableError, match="closed"):
        await cache.bump_generation("a")


def test_repr_shows_the_server_and_never_the_password() -> None:
    cache = RedisCache.from_url("redis://alice:s3cret-pw@10.1.2.3:6380/4", prefix="app:")
    text = repr(cache)
    assert "10.1.2.3:6380/4" in text
    assert "app:" in text
    assert "s3cret" not in text
    assert "alice" not in text
    asyncio.run(cache.aclose())


async def test_errors_never_show_the_password() -> None:
    port = free_port()
    async with RedisCache.from_url(f"redis://alice:s3cret-pw@127.0.0.1:{port}/0") as cache:
        with pytest.raises(CacheUnavailableError) as info:
            await cache.get("k")
    assert "s3cret" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_a_lent_client_must_return_bytes() -> None:
    client = redis.asyncio.Redis(decode_responses=True)
    with pytest.raises(ConfigurationError, match="decodes"):
        RedisCache(client=client)
    asyncio.run(client.aclose())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"url": "redis://localhost", "client": "x"}, "exactly one"),
        ({"client": object()}, "redis.asyncio.Redis"),
        ({"url": "http://localhost"}, "url"),
        ({"url": "redis://localhost", "prefix": ""}, "prefix"),
        ({"url": "redis://localhost", "read_timeout": 0}, "read_timeout"),
        ({"url": "redis://localhost", "write_timeout": -1.0}, "write_timeout"),
        ({"url": "redis://localhost", "close_timeout": True}, "close_timeout"),
        ({"url": "redis://localhost", "max_pending_writes": 0}, "max_pending_writes"),
        ({"url": "redis://localhost", "max_connections": 2.5}, "max_connections"),
    ],
)
def test_rejects_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisCache(**kwargs)  # type: ignore[arg-type]


@pytest.mark.redis
async def test_a_burst_queued_for_a_pooled_connection_is_not_taken_for_a_slow_redis(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    """A thousand commands at once on two pooled connections: most wait for one in this
    process, which is no part of Redis's budget, and none fails."""
    async with RedisCache.from_url(redis_url, prefix=redis_prefix, max_connections=2) as cache:

        async def one(i: int) -> object:
            key = cache.redis_key(f"k{i}")
            return await cache.run("SET", cache.read_timeout, partial(cache.redis.set, key, b"v"))

        answers = await asyncio.gather(*(one(i) for i in range(1_000)), return_exceptions=True)
        assert [a for a in answers if isinstance(a, BaseException)] == []
        assert cache.breaker.opens == 0
    assert len([key async for key in raw.scan_iter(match=redis_prefix + "k*")]) == 1_000


@pytest.mark.redis
async def test_the_wait_for_a_pooled_connection_is_bounded_and_never_blames_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """Every connection held by this process: a command waits for one for at most 20
    budgets, then fails as not sent (``CacheRejectedError``), and the breaker is not told."""
    async with RedisCache.from_url(
        redis_url, prefix=redis_prefix, max_connections=1, read_timeout=0.005
    ) as cache:
        assert isinstance(cache.redis, redis.asyncio.Redis)
        pool = cache.redis.connection_pool
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            for _ in range(cache.breaker.failure_threshold):
                with pytest.raises(CacheRejectedError, match="no free connection"):
                    await cache.run("GET", cache.read_timeout, partial(cache.redis.get, "k"))
        finally:
            await pool.release(held)
        assert cache.breaker_state == "closed"
        assert await cache.run("GET", cache.read_timeout, partial(cache.redis.get, "k")) is None


@pytest.mark.redis
async def test_an_entry_redis_still_holds_past_its_expiry_is_no_hit_even_as_tier_0(
    redis_url: str, redis_prefix: str
) -> None:
    # Regression: tier 0 was trusted to expire its own entries, as an in-process one
    # does; a SET that timed out against a paused Redis lands when it resumes with its
    # whole TTL, and Redis served the entry past its expiry.
    now = [1_000.0]
    body = {"choices": [{"message": {"role": "assistant", "content": "old"}}]}
    entry = CacheEntry(body, Usage(), None, "a", now[0], now[0] + 30.0)
    redis_tier = RedisCache.from_url(redis_url, prefix=redis_prefix)
    cache = TieredCache(redis_tier, clock=lambda: now[0])
    try:
        assert await cache.set("k", entry) is not None
        await redis_tier.flush()
        assert await cache.get("k") is not None
        now[0] += 60.0  # past the entry's expiry; Redis's own TTL has not run out
        assert await redis_tier.get("k") is not None
        assert await cache.get("k") is None
    finally:
        await cache.aclose()

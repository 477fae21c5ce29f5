"""Redis down, dying, slow, full or holding garbage: a cache fault is never a failed call.

RedisCache alone raises ``CacheUnavailableError`` and nothing else; through
``TieredCache`` every fault is a counted miss. Circuit breakers get a fake clock, so a
cool-down passes when the test says so; nothing here sleeps to synchronise. The
cross-process flight's faults are in ``tests/flight/test_redis_flight_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from limpet import CacheStatus, Client, Endpoint
from limpet.cache.base import CacheEntry, EntryCodec
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.memory import MemoryCache
from limpet.cache.redis.backend import RedisCache
from limpet.cache.tiered import TieredCache
from limpet.errors import CacheTimeoutError, CacheUnavailableError
from limpet.models import Usage
from limpet.testing import FakeGateway
from tests.fakes import COOLDOWN, FakeClock
from tests.redis_servers import RedisProxy, RedisServer, filled, free_port, state

pytestmark = pytest.mark.redis


def entry(i: int, *, now: float | None = None, ttl: float = 600.0) -> CacheEntry:
    created = time.time() if now is None else now
    return CacheEntry(
        body={"id": f"gen-{i}", "choices": [{"message": {"content": f"answer {i}"}}]},
        usage=Usage(prompt_tokens=10, completion_tokens=i),
        cost_usd=0.001,
        endpoint="a",
        created_at=created,
        expires_at=created + ttl,
    )


async def unavailable(operation: Callable[[], object]) -> CacheUnavailableError:
    """Run ``operation`` and return the ``CacheUnavailableError`` it must raise."""
    try:
        result = operation()
        if asyncio.iscoroutine(result):
            await result
    except CacheUnavailableError as exc:
        return exc
    raise AssertionError("expected CacheUnavailableError")


# -- Redis down from the start ---------------------------------------------------------


async def test_dead_port_alone_every_operation_is_unavailable(breaker: CircuitBreaker) -> None:
    async with RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", breaker=breaker) as rc:
        exc = await unavailable(lambda: rc.get("k"))
        assert isinstance(exc.__cause__, redis.exceptions.ConnectionError | OSError)
        # set() queues and returns; its failure is counted, not raised.
        await rc.set("k", b"v", 60)
        await rc.flush()
        assert rc.failed_writes == 1
        await unavailable(lambda: rc.delete("k"))
        assert state(rc) == "open"
        for op in (
            lambda: rc.get("j"),  # "k" is owed a delete: a miss here, without Redis
            lambda: rc.set("k", b"v", 60),
            lambda: rc.delete("k"),
            lambda: rc.clear(),
            lambda: rc.generations(["a"]),
            lambda: rc.bump_generation("a"),
        ):
            exc = await unavailable(op)
            assert "circuit breaker open" in str(exc)
        assert rc.pending_writes == 0


async def test_dead_port_through_tiers_every_get_is_a_miss(breaker: CircuitBreaker) -> None:
    rc = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", breaker=breaker)
    tiered = TieredCache(MemoryCache(), rc)
    try:
        for i in range(100):
            assert await tiered.get(f"never-set-{i}") is None
            await tiered.set(f"k{i}", entry(i))
        assert tiered.stats.misses == 100
        assert tiered.stats.errors >= 100
        assert tiered.stats.hits == [0, 0]
        # L1 still serves what this process wrote.
        hit = await tiered.get("k7")
        assert hit is not None and hit[1] == 0
    finally:
        await tiered.aclose()


async def test_an_open_breaker_keeps_off_the_network(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    # The proxy accepts connections and drops them (its target refuses): it counts every
    # attempt the cache makes to reach Redis.
    async with (
        RedisProxy(free_port()) as proxy,
        RedisCache(url=proxy.url, breaker=breaker) as rc,
    ):
        for _ in range(3):
            await unavailable(lambda: rc.get("k"))
        assert state(rc) == "open"
        attempts = proxy.accepted
        assert attempts >= 3

        for i in range(200):
            await unavailable(lambda: rc.get("g"))  # "k", owed a delete, is a miss
            await unavailable(partial(rc.set, f"k{i}", b"v", 60))
            await unavailable(lambda: rc.delete("k"))
            await unavailable(lambda: rc.generations(["*", "m"]))
            await unavailable(lambda: rc.bump_generation("m"))
        assert proxy.accepted == attempts
        assert breaker.rejected >= 800

        # After the cool-down exactly one probe goes out (one command: a connection that
        # drops is retried once on a fresh one, so two connections at most); it fails
        # and re-opens.
        clock.advance(COOLDOWN)
        assert state(rc) == "half_open"
        await unavailable(lambda: rc.get("g"))
        assert attempts + 1 <= proxy.accepted <= attempts + 2
        assert state(rc) == "open"
        assert breaker.opens == 1
        assert breaker.rejected >= 800  # and nothing else went out


# -- Redis dies mid-run, and comes back ------------------------------------------------


async def test_redis_killed_mid_run_then_restarted(
    redis_server: RedisServer, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    rc = RedisCache(url=redis_server.url, breaker=breaker)
    # A tiny L1, so that most reads fall through to Redis.
    tiered = TieredCache(MemoryCache(max_entries=4), rc)
    try:
        hits_before_kill = 0
        for i in range(500):
            if i == 250:
                hits_before_kill = tiered.stats.hits[1]
                redis_server.kill()
            await tiered.set(f"k{i}", entry(i))
            if i % 10 == 0:
                await rc.flush()
            await tiered.get(f"k{max(i - 20, 0)}")
        assert hits_before_kill > 100
        assert tiered.stats.hits[1] == hits_before_kill  # nothing from a dead Redis
        assert tiered.stats.errors > 200
        assert state(rc) == "open"
        assert breaker.opens == 1

        redis_server.restart()  # same port, empty
        # Still open: the cool-down has not passed, so nobody has noticed yet.
        assert await tiered.get("k0") is None
        assert state(rc) == "open"
        clock.advance(COOLDOWN)
        assert await tiered.get("k0") is None  # the probe: a plain miss, Redis is back
        assert state(rc) == "closed"

        for i in range(1000, 1020):
            await tiered.set(f"k{i}", entry(i))
        await rc.flush()
        hits = tiered.stats.hits[1]
        for i in range(1000, 1016):
            found = await tiered.get(f"k{i}")
            assert found is not None and found[1] == 1
        assert tiered.stats.hits[1] == hits + 16
    finally:
        await tiered.aclose()


async def test_connections_left_dead_by_a_restart_cost_no_command(
    redis_server: RedisServer, breaker: CircuitBreaker
) -> None:
    # The pool keeps connections to the server that was; each one fails the first command
    # sent on it. Retried once on a fresh connection, no command fails, the breaker stays
    # closed and no write is lost.
    async with RedisCache(url=redis_server.url, breaker=breaker) as rc:
        await asyncio.gather(*(rc.set(f"k{i}", b"v", 60) for i in range(5)))
        await rc.flush()
        # Five reads at once hold five pooled connections open, then give them back; and
        # one lone read keeps its own connection.
        await asyncio.gather(
            *(rc.run("GET", 1.0, partial(rc.redis.get, rc.redis_key(f"k{i}"))) for i in range(5))
        )
        assert await rc.get("k0") == b"v"
        redis_server.kill()
        redis_server.restart()  # same port, empty: every pooled connection is dead
        for i in range(10):
            assert await rc.get(f"k{i}") is None  # answered: the restart lost the data
        rc_writes_before = rc.failed_writes
        for i in range(5):
            await rc.set(f"after{i}", b"v", 60)
            await rc.flush()
        assert [await rc.get(f"after{i}") for i in range(5)] == [b"v"] * 5
        assert rc.failed_writes == rc_writes_before
        assert state(rc) == "closed" and breaker.opens == 0


# -- Redis slow ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["delay", "stall"])
async def test_slow_redis_times_out_opens_the_breaker_and_calls_still_return(
    mode: str,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    breaker: CircuitBreaker,
    clock: FakeClock,
) -> None:
    codec = EntryCodec()
    for i in range(10):
        await raw.set(f"{redis_prefix}k{i}", codec.encode(f"k{i}", entry(i)), px=60_000)
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = RedisCache(url=proxy.url, prefix=redis_prefix, breaker=breaker)
        tiered = TieredCache(MemoryCache(), rc)
        try:
            found = await tiered.get("k0")
            assert found is not None and found[1] == 1

            if mode == "delay":
                proxy.delay = 0.5  # ten times the read timeout
            else:
                proxy.stall()
            started = time.monotonic()
            for i in range(1, 10):
                assert await tiered.get(f"k{i}") is None
                await tiered.set(f"new{i}", entry(i))
            elapsed = time.monotonic() - started
            assert state(rc) == "open"
            assert tiered.stats.errors >= 9
            # Three read timeouts of 50 ms opened the breaker; after that every call
            # returned at once (without it, 9 reads would take 450 ms or more).
            assert elapsed < 0.4, elapsed
            err = await unavailable(lambda: rc.get("k1"))
            assert "circuit breaker open" in str(err)

            proxy.delay = 0.0
            proxy.resume()
            clock.advance(COOLDOWN)
            found = await tiered.get("k5")
            assert found is not None and found[1] == 1
            assert state(rc) == "closed"
        finally:
            await tiered.aclose()


async def test_a_caller_cancelling_is_not_a_redis_failure(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker
) -> None:
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache(url=proxy.url, prefix=redis_prefix, breaker=breaker) as rc,
    ):
        assert await rc.get("k") is None  # connected
        proxy.stall()
        for _ in range(5):
            with pytest.raises(TimeoutError):
                # Gives up well inside the 50 ms read timeout: a cancellation.
                await asyncio.wait_for(rc.get("k"), 0.01)
        assert state(rc) == "closed"
        proxy.resume()
        assert await rc.get("k") is None


async def test_writes_never_wait_for_a_stalled_redis(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker
) -> None:
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = RedisCache(url=proxy.url, prefix=redis_prefix, breaker=breaker)
        try:
            proxy.stall()
            started = time.monotonic()
            for i in range(100):
                await rc.set(f"k{i}", b"v", 60)
            assert time.monotonic() - started < 0.05
            assert rc.pending_writes == 100
            # Queued values are answered locally, without Redis.
            assert await rc.get("k42") == b"v"
            await rc.flush()
            assert rc.failed_writes == 100  # two batches, each timed out
            assert rc.pending_writes == 0
        finally:
            await rc.aclose()


# -- Redis full ------------------------------------------------------------------------


async def test_full_redis_fails_writes_and_still_serves_reads(
    redis_server_factory: Callable[..., RedisServer], breaker: CircuitBreaker
) -> None:
    server = redis_server_factory("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    rc = RedisCache(url=server.url, breaker=breaker)
    tiered = TieredCache(MemoryCache(max_entries=1), rc)
    try:
        await tiered.set("before", entry(0))
        await rc.flush()
        assert rc.failed_writes == 0
        async with filled(server.url):
            for i in range(20):
                await tiered.set(f"after{i}", entry(i))
            await rc.flush()
            assert rc.failed_writes == 20
            assert state(rc) == "closed"  # Redis answered: full is not down

            found = await tiered.get("before")  # evicted from the one-entry L1
            assert found is not None and found[1] == 1
            assert await tiered.get("after3") is None  # its write was refused
    finally:
        await tiered.aclose()


# -- Generation counters lost (evicted, or a restart without persistence) ---------------


async def test_an_evicted_generation_never_brings_old_entries_back(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as rc:
        [old] = await rc.generations(["m"])
        await rc.set(f"entry@{old}", b"stale", 600)  # keys carry the generation
        await rc.flush()
        bumped = await rc.bump_generation("m")
        await raw.delete(rc.generation_key("m"))  # evicted (allkeys-lru)
        # Another process, which never saw it, re-creates it: never back to ``old``.
        async with RedisCache.from_url(redis_url, prefix=redis_prefix) as other:
            [now] = await other.generations(["m"])
            assert now > bumped > old
            assert await other.get(f"entry@{now}") is None
            await raw.delete(rc.generation_key("m"))
            # Bumped while missing: above every value it had, not 1.
            assert await other.bump_generation("m") > now


# -- Redis holds something that is not ours --------------------------------------------


async def test_garbage_under_a_key_is_a_corrupt_miss_and_is_deleted(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    await raw.set(redis_prefix + "k", b"\xff\x00 definitely not an entry", px=60_000)
    tiered = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    try:
        assert await tiered.get("k") is None
        assert tiered.stats.corrupt == 1
        assert tiered.stats.misses == 1
        assert await raw.exists(redis_prefix + "k") == 0
    finally:
        await tiered.aclose()


async def test_an_entry_signed_with_another_key_is_a_corrupt_miss(
    redis_url: str, redis_prefix: str
) -> None:
    writer = TieredCache(
        MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix), hmac_key=b"a"
    )
    await writer.set("k", entry(1))
    await writer.set("k2", entry(2))
    await writer.aclose()  # flushes the writes

    stranger = TieredCache(
        MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix), hmac_key=b"b"
    )
    friend = TieredCache(
        MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix), hmac_key=b"a"
    )
    try:
        assert await stranger.get("k") is None
        assert stranger.stats.corrupt == 1
        found = await friend.get("k2")
        assert found is not None and found[0].body["id"] == "gen-2"
    finally:
        await stranger.aclose()
        await friend.aclose()


# -- Tiers working together ------------------------------------------------------------


async def test_an_l2_hit_back_fills_l1_with_the_remaining_ttl(
    redis_url: str, redis_prefix: str
) -> None:
    wall = FakeClock(1_700_000_000.0)
    monotonic = FakeClock()
    writer = RedisCache.from_url(redis_url, prefix=redis_prefix)
    await writer.set("k", EntryCodec().encode("k", entry(1, now=wall.now, ttl=100)), 100)
    await writer.aclose()

    wall.advance(40)  # 60 s of the entry's life are left
    tiered = TieredCache(
        MemoryCache(clock=monotonic),
        RedisCache.from_url(redis_url, prefix=redis_prefix),
        clock=wall,
    )
    try:
        found = await tiered.get("k")
        assert found is not None and found[1] == 1
        monotonic.advance(59.9)
        found = await tiered.get("k")
        assert found is not None and found[1] == 0  # from L1 now
        monotonic.advance(0.2)
        found = await tiered.get("k")
        assert found is not None and found[1] == 1  # L1's copy expired with the entry
        assert tiered.stats.hits == [1, 2]
    finally:
        await tiered.aclose()


async def test_aclose_flushes_background_writes(redis_url: str, redis_prefix: str) -> None:
    tiered = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    for i in range(200):
        await tiered.set(f"k{i}", entry(i))
    await tiered.aclose()

    codec = EntryCodec()
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as fresh:
        for i in range(200):
            data = await fresh.get(f"k{i}")
            assert data is not None, i
            assert codec.decode(f"k{i}", data).body["id"] == f"gen-{i}"


# -- Bursts on a healthy Redis ---------------------------------------------------------


def prompt(i: int) -> dict[str, Any]:
    return {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": f"burst question {i}"}],
        "temperature": 0,
    }


@pytest.mark.parametrize("callers", [500, 5_000])
async def test_a_burst_of_shared_tier_hits_is_all_hits_with_the_breaker_closed(
    redis_url: str, redis_prefix: str, callers: int
) -> None:
    # Reads used to be one GET per caller, timed from when the caller asked: a burst
    # queued on the event loop and the pool, timed out, opened the breaker and went
    # upstream. Now they are batched and timed by the server.
    async with FakeGateway(endpoints=("a",)) as gateway:
        endpoint = Endpoint("a", gateway.base_url("a"))
        # Setup, not the subject: a cache that waits and never gives up on Redis.
        warm_cache = RedisCache.from_url(
            redis_url,
            prefix=redis_prefix,
            read_timeout=5.0,
            write_timeout=5.0,
            max_pending_writes=callers,
            breaker=CircuitBreaker(failure_threshold=callers),
        )
        async with Client(endpoints=[endpoint], cache=warm_cache, coalesce=False) as warm:
            for start in range(0, callers, 500):
                await asyncio.gather(
                    *(warm.complete(**prompt(i)) for i in range(start, start + 500))
                )
            await warm_cache.flush()
        assert gateway.total_calls == callers
        assert warm_cache.failed_writes == warm_cache.dropped_writes == 0
        shared = RedisCache.from_url(redis_url, prefix=redis_prefix)
        async with Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), shared)) as c:
            results = await asyncio.gather(*(c.complete(**prompt(i)) for i in range(callers)))
            assert [r.cache for r in results].count(CacheStatus.HIT) == callers
            assert gateway.total_calls == callers  # not one more
            assert state(shared) == "closed"
            assert shared.breaker.opens == 0
            assert 0 < shared._reads.batches < callers


# -- Reads on a healthy Redis: a busy event loop, readers that give up -----------------


async def test_the_read_budget_counts_the_server_not_a_busy_event_loop(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker) as rc:
        await rc.set("k", b"v", 60)
        await rc.flush()
        loop = asyncio.get_running_loop()
        for _ in range(breaker.failure_threshold + 1):
            read = asyncio.create_task(rc.get("k"))
            # While the GET is out, the loop is busy elsewhere for four read budgets
            # (a CPU-bound stretch of other callers): the thing under test, not a wait.
            loop.call_soon(time.sleep, 4 * rc.read_timeout)
            assert await read == b"v"
        assert state(rc) == "closed"


async def test_a_reader_that_gives_up_leaves_its_batch_to_the_others(
    redis_url: str, redis_prefix: str
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as rc:
        for i in range(10):
            await rc.set(f"k{i}", f"v{i}".encode(), 60)
        await rc.flush()
        reads = [asyncio.create_task(rc.get(f"k{i % 10}")) for i in range(200)]
        await asyncio.sleep(0)  # every read has asked: one alone, the rest queued
        for read in reads[1::2]:
            read.cancel()
        values = await asyncio.gather(*reads[0::2])
        assert values == [f"v{i % 10}".encode() for i in range(0, 200, 2)]
        assert all(read.cancelled() for read in reads[1::2])
        assert state(rc) == "closed"


async def test_a_redis_some_ms_away_is_not_taken_for_down_at_each_new_connection(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """A 20 ms round trip fits a command's 50 ms budget, but opening a connection (the
    handshake, then redis-py's setup commands) takes a few round trips more: counted
    against the command, it cut every command on a new connection short, which closed
    that connection, so the next connected again; the breaker opened and never closed,
    and the shared tier was off for good. A connecting call gets an allowance now, the
    breaker's probe too (but not a call of a failure streak: a slow server is still
    found at once)."""
    async with RedisProxy.for_url(redis_url) as proxy:
        proxy.delay = 0.01  # each way: 20 ms a round trip
        async with RedisCache(url=proxy.url, prefix=redis_prefix, breaker=breaker) as cache:
            for _ in range(3):  # the first opens the connection
                assert await cache.get("k") is None
            await cache.set("k", b"v", 60)
            await cache.flush()
            assert await cache.get("k") == b"v"
            assert state(cache) == "closed"
            assert proxy.accepted == 2  # the reads' and a write's: none was cut, none opened again
            # An outage opens the breaker; its reads were cut, so the probe connects.
            proxy.stall()
            while state(cache) == "closed":
                await unavailable(lambda: cache.get("k"))
            proxy.resume()
            clock.advance(COOLDOWN)
            assert await cache.get("k") == b"v"
            assert state(cache) == "closed"


async def test_a_lent_clients_own_timeout_is_a_timeout_not_an_outage(
    redis_url: str, redis_prefix: str
) -> None:
    """A lent client's own socket timeout (redis-py's ``TimeoutError``, no built-in one)
    says the server was slow, as the cache's budget running out does: a
    ``CacheTimeoutError``, which a cross-process follower rides out, where an outage
    (a refused connection) sends it upstream at once."""
    async with RedisProxy.for_url(redis_url) as proxy:
        proxy.delay = 0.05
        lent = redis.asyncio.Redis.from_url(proxy.url, socket_timeout=0.01)
        cache = RedisCache(client=lent, prefix=redis_prefix, read_timeout=1.0)
        try:
            err = await unavailable(lambda: cache.get("k"))
            assert isinstance(err, CacheTimeoutError)
            assert isinstance(err.__cause__, redis.exceptions.TimeoutError)
        finally:
            await cache.aclose()
            await lent.aclose()

"""Client.complete over a Redis tier that is down, dying, slow, full, corrupt or shared:
no cache fault ever fails a call.

Real ``redis-server`` processes (shared or private, which a test may kill) and the real
FakeGateway over loopback. Breakers and generations get fake clocks, so a cool-down or a
refresh interval passes when the test says so; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.counter_starts import CounterStarts
from limpet.cache.generations import Generations
from limpet.cache.memory import DEFAULT_MAX_ENTRIES
from limpet.testing import FakeGateway
from tests.fakes import COOLDOWN, FakeClock
from tests.integration.chat import MODEL, ask
from tests.redis_servers import RedisProxy, RedisServer, eventually, filled, free_port

pytestmark = pytest.mark.redis

OTHER_MODEL = "openai/gpt-5"
# For tests about what a healthy (or dead, or full) Redis means, not about its speed: a
# loaded CI machine must not turn them into timeout tests. Slowness has its own test.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
FAST_RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)


def make_client(
    gateway: FakeGateway,
    rc: RedisCache,
    *,
    l1: int | None = DEFAULT_MAX_ENTRIES,
    hmac_key: bytes | None = None,
    namespace: str = "",
) -> Client:
    """A Client on ``TieredCache(MemoryCache(max_entries=l1), rc)``, or on ``rc`` alone when
    ``l1`` is None."""
    tiers = (rc,) if l1 is None else (MemoryCache(max_entries=l1), rc)
    client = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(*tiers, hmac_key=hmac_key),
        retry=FAST_RETRY,
        namespace=namespace,
    )
    assert client.cache is not None
    return client


def use_generation_clock(client: Client, rc: RedisCache, clock: FakeClock, namespace: str) -> None:
    """Give ``client`` generations that refresh every second of ``clock``."""
    client._keying.generations = Generations(
        rc,
        namespace=namespace,
        credential=client._keying.credential,
        refresh_interval=1.0,
        clock=clock,
    )


# -- Redis down from the start ---------------------------------------------------------


async def test_redis_down_from_the_start_every_call_succeeds_and_none_waits_on_redis(
    gateway: FakeGateway, breaker: CircuitBreaker
) -> None:
    # The proxy accepts connections and drops them (its target refuses): it counts every
    # attempt the client makes to reach Redis.
    async with RedisProxy(free_port()) as proxy:
        rc = RedisCache(url=proxy.url, breaker=breaker)
        async with make_client(gateway, rc) as client:
            first = [await client.complete(**ask(f"q{i}")) for i in range(5)]
            assert all(c.content for c in first)
            assert client.stats.breaker_state == "open"
            attempts = proxy.accepted
            assert attempts >= 3

            texts = [f"q{i % 40}" for i in range(200)]  # repeats and new ones, concurrent
            results = await asyncio.gather(*(client.complete(**ask(t)) for t in texts))
            await client.invalidate(model=MODEL)
            results += [await client.complete(**ask(t, model=OTHER_MODEL)) for t in texts[:20]]

            assert all(r.content for r in results)
            assert proxy.accepted == attempts  # nothing tried to reach Redis
            stats = client.stats
            assert stats.errors == 0
            assert stats.l2_hits == 0
            assert stats.l1_hits > 0  # this process's own answers still serve
            assert stats.cache_errors > 0
            assert stats.breaker_state == "open"
            assert stats.as_dict()["breaker_state"] == "open"


# -- Redis dies mid-run, and comes back ------------------------------------------------


async def test_redis_killed_among_500_concurrent_calls_fails_none_then_hits_resume(
    gateway: FakeGateway, redis_server: RedisServer, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    rc = RedisCache(url=redis_server.url, breaker=breaker, **PATIENT)
    # A tiny L1, so that repeats are read from Redis.
    async with make_client(gateway, rc, l1=4) as client:
        done = 0
        halfway = asyncio.Event()
        in_flight = asyncio.Semaphore(25)

        async def call(i: int) -> str | None:
            nonlocal done
            async with in_flight:
                completion = await client.complete(**ask(f"q{(i * 7) % 90}"))
            done += 1
            if done == 250:
                halfway.set()
            return completion.content

        async def kill_halfway() -> None:
            await halfway.wait()
            redis_server.kill()  # while about 25 calls are in flight

        results, _ = await asyncio.gather(
            asyncio.gather(*(call(i) for i in range(500))), kill_halfway()
        )
        assert all(results)
        assert client.stats.errors == 0
        assert client.stats.requests == 500
        hits_before = client.stats.l2_hits
        assert hits_before > 0
        assert client.stats.breaker_state == "open"

        redis_server.restart()  # same port, empty
        clock.advance(COOLDOWN)  # the next Redis call probes
        fresh = [f"after-restart {i}" for i in range(12)]
        for text in fresh:
            assert (await client.complete(**ask(text))).cache is CacheStatus.MISS
        assert client.stats.breaker_state == "closed"
        assert client.stats.cache_errors > 0  # during the outage
        await rc.flush()
        failed = rc.failed_writes

        # Evicted from the 4-entry L1 long ago, so these come from Redis.
        for text in fresh[:8]:
            assert (await client.complete(**ask(text))).cache is CacheStatus.HIT
        assert client.stats.l2_hits == hits_before + 8
        assert rc.failed_writes == failed


# -- Redis slow ------------------------------------------------------------------------


async def test_slow_redis_calls_succeed_and_the_breaker_opens(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, breaker: CircuitBreaker
) -> None:
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = RedisCache(url=proxy.url, prefix=redis_prefix, breaker=breaker)
        async with make_client(gateway, rc) as client:
            assert (await client.complete(**ask("warm"))).cache is CacheStatus.MISS
            assert client.stats.breaker_state == "closed"
            proxy.delay = 0.5  # ten times the read timeout
            results = [await client.complete(**ask(f"slow {i}")) for i in range(10)]
            results += await asyncio.gather(*(client.complete(**ask(f"q{i}")) for i in range(20)))
            assert all(r.content for r in results)
            assert client.stats.errors == 0
            assert client.stats.cache_errors >= 3
            assert client.stats.breaker_state == "open"
            proxy.delay = 0.0


async def test_releases_left_to_send_again_stop_with_the_client(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = RedisCache(url=proxy.url, prefix=redis_prefix)
        client = make_client(gateway, rc)
        async with client:
            assert (await client.complete(**ask())).content
            shared = client._pipelines._shared
            assert len(shared) == 3  # complete()'s, stream()'s and embed()'s flights
            proxy.delay = 0.5  # ten times the budgets: no release is answered
            for flight in shared:  # a lease whose release went unanswered, as in a pause
                flight._release_later("a key", "a token")
            releasing = [t for t in asyncio.all_tasks() if t.get_name() == "limpet-flight-releases"]
            assert len(releasing) == 3
        assert all(task.done() for task in releasing)  # aclose() stopped sending them again
        assert all(flight.unreleased == 0 for flight in shared)
        proxy.delay = 0.0


# -- Redis full ------------------------------------------------------------------------


async def test_full_redis_calls_succeed_and_writes_count_as_failed(
    gateway: FakeGateway,
    redis_server_factory: Callable[..., RedisServer],
    breaker: CircuitBreaker,
) -> None:
    # Room for the empty server and its few clients (each holds buffers), then filled.
    server = redis_server_factory("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    rc = RedisCache(url=server.url, breaker=breaker, **PATIENT)
    async with make_client(gateway, rc) as client:
        await client.complete(**ask("before"))
        await rc.flush()
        assert client.stats.failed_cache_writes == 0
        async with filled(server.url):
            results = await asyncio.gather(*(client.complete(**ask(f"q{i}")) for i in range(20)))
            assert all(r.cache is CacheStatus.MISS and r.content for r in results)
            await rc.flush()
            assert client.stats.errors == 0
            assert client.stats.failed_cache_writes >= 20
            assert client.stats.as_dict()["failed_cache_writes"] >= 20
            assert client.stats.breaker_state == "closed"  # Redis answered: full is not down
            # What this process wrote is still served from L1.
            assert (await client.complete(**ask("q3"))).cache is CacheStatus.HIT


# -- Redis holds something that is not ours --------------------------------------------


async def test_garbage_under_a_key_is_a_miss_counted_corrupt(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with make_client(gateway, rc, l1=None) as client:
            first = await client.complete(**ask())
            assert first.key is not None
            await rc.flush()
            await raw.set(rc.redis_key(first.key), b"\xff\x00 not an entry", px=60_000)

            again = await client.complete(**ask())
            assert again.cache is CacheStatus.MISS
            assert again.content == first.content
            assert client.stats.corrupt == 1
            assert client.stats.as_dict()["cache_corrupt"] == 1
            assert gateway.endpoint("a").calls == 2
            # The miss stored a good entry over the garbage.
            await rc.flush()
            assert (await client.complete(**ask())).cache is CacheStatus.HIT
    finally:
        await raw.aclose()


async def test_an_entry_signed_with_another_key_is_a_miss(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def signed(key: bytes) -> tuple[Client, RedisCache]:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
        return make_client(gateway, rc, hmac_key=key), rc

    (a, rc_a), (b, rc_b), (c, rc_c) = signed(b"key-one"), signed(b"key-two"), signed(b"key-one")
    (d, _) = signed(b"key-one")
    async with a, b, c, d:
        assert (await a.complete(**ask())).cache is CacheStatus.MISS
        await rc_a.flush()
        assert (await b.complete(**ask())).cache is CacheStatus.MISS
        assert b.stats.corrupt == 1
        await rc_b.flush()  # b's answer, signed with its key, replaced a's in Redis
        assert (await c.complete(**ask())).cache is CacheStatus.MISS
        assert c.stats.corrupt == 1
        await rc_c.flush()
        assert (await d.complete(**ask())).cache is CacheStatus.HIT  # same key as c
        assert (await a.complete(**ask())).cache is CacheStatus.HIT  # from a's own L1
        assert (d.stats.l2_hits, a.stats.l1_hits) == (1, 1)
    assert gateway.endpoint("a").calls == 3


# -- Sharing one Redis -----------------------------------------------------------------


@pytest.mark.parametrize("scope", ["model", "everything"])
async def test_invalidation_reaches_another_client_within_the_refresh_interval(
    scope: str, gateway: FakeGateway, redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    rc_a = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    rc_b = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    async with make_client(gateway, rc_a) as a, make_client(gateway, rc_b) as b:
        use_generation_clock(b, rc_b, clock, namespace="")
        assert (await a.complete(**ask())).cache is CacheStatus.MISS
        await rc_a.flush()
        assert (await b.complete(**ask())).cache is CacheStatus.HIT
        assert b.stats.l2_hits == 1

        old = await a.complete(**ask())
        await a.invalidate(model=MODEL if scope == "model" else None)
        # Until b refreshes its generations (at most once a second) it serves the old
        # entry: bounded staleness, the price of a hit that is one Redis GET.
        stale = await b.complete(**ask())
        assert (stale.cache, stale.key) == (CacheStatus.HIT, old.key)

        clock.advance(1.0)  # the refresh interval has passed: the next call refreshes

        async def b_misses() -> bool:
            return (await b.complete(**ask())).cache is CacheStatus.MISS

        await eventually(b_misses, what="b seeing the invalidation")
        assert gateway.endpoint("a").calls == 2
        await rc_b.flush()
        fresh = await a.complete(**ask())  # a invalidated too, and finds b's new answer
        assert (fresh.cache, a.stats.l2_hits) == (CacheStatus.HIT, 1)
        assert fresh.key != old.key


async def test_a_client_idle_past_twice_the_refresh_interval_never_serves_an_invalidated_entry(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, clock: FakeClock
) -> None:
    rc_a = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    rc_b = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    async with make_client(gateway, rc_a) as a, make_client(gateway, rc_b) as b:
        use_generation_clock(b, rc_b, clock, namespace="")
        old = await a.complete(**ask())
        await rc_a.flush()
        assert (await b.complete(**ask())).cache is CacheStatus.HIT  # now in b's memory tier
        await a.invalidate(model=MODEL)
        clock.advance(2.0)  # b made no call meanwhile, so nothing refreshed its generations

        first = await b.complete(**ask())
        assert (first.cache, first.key != old.key) == (CacheStatus.MISS, True)
    assert gateway.endpoint("a").calls == 2


async def test_an_invalidation_after_redis_restarts_empty_reaches_a_client_that_outlived_it(
    gateway: FakeGateway, redis_server: RedisServer, clock: FakeClock
) -> None:
    # Restarted without persistence, Redis forgets its generation counters. A Client that
    # lived through it holds the old values, and its memory tier the answers keyed by
    # them: counters that start again at 0 would catch up with those values after a few
    # invalidations, and from then on the Client would miss every new one.
    rc_a = RedisCache(url=redis_server.url, **PATIENT)
    async with make_client(gateway, rc_a) as a:
        use_generation_clock(a, rc_a, clock, namespace="")
        await a.invalidate(model=MODEL)
        old = await a.complete(**ask())  # in a's memory tier, keyed by generation 1
        redis_server.kill()
        redis_server.restart()  # same port, empty
        async with make_client(gateway, RedisCache(url=redis_server.url, **PATIENT)) as b:
            await b.invalidate(model=MODEL)
        clock.advance(2.0)  # past the refresh bound: a reads the generations again

        after = await a.complete(**ask())
        assert (after.cache, after.key != old.key) == (CacheStatus.MISS, True)
    assert gateway.endpoint("a").calls == 2


async def test_an_invalidation_from_a_clock_behind_after_a_lost_counter_reaches_every_client(
    gateway: FakeGateway, redis_server: RedisServer, clock: FakeClock
) -> None:
    # Redis restarts empty; the next process to use the counter has a wall clock a minute
    # behind and re-creates it below the value a Client that outlived the restart holds.
    rc_a = RedisCache(url=redis_server.url, **PATIENT)
    async with make_client(gateway, rc_a) as a:
        use_generation_clock(a, rc_a, clock, namespace="")
        old = await a.complete(**ask())  # in a's memory tier, keyed by the clock's counter
        redis_server.kill()
        redis_server.restart()  # same port, empty
        rc_b = RedisCache(url=redis_server.url, **PATIENT)
        rc_b._counter_starts = CounterStarts(wall_ns=lambda: time.time_ns() - 60 * 10**9)
        async with make_client(gateway, rc_b) as b:
            await b.invalidate(model=MODEL)
            clock.advance(2.0)  # past the refresh bound: a reads the generations again
            after = await a.complete(**ask())
            assert (after.cache, after.key != old.key) == (CacheStatus.MISS, True)
            await b.invalidate(model=MODEL)  # and every later invalidation reaches a too
            clock.advance(2.0)
            again = await a.complete(**ask())
            assert (again.cache, again.key != after.key) == (CacheStatus.MISS, True)
    assert gateway.endpoint("a").calls == 3


async def test_namespaces_isolate_tenants_on_one_redis(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def tenant(namespace: str) -> tuple[Client, RedisCache]:
        rc = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
        return make_client(gateway, rc, namespace=namespace), rc

    (one, rc_one), (two, _), (one_again, _) = tenant("one"), tenant("two"), tenant("one")
    async with one, two, one_again:
        first = await one.complete(**ask())
        await rc_one.flush()
        second = await two.complete(**ask())
        assert second.cache is CacheStatus.MISS
        assert second.key != first.key
        assert (await one_again.complete(**ask())).cache is CacheStatus.HIT
        assert one_again.stats.l2_hits == 1
        await two.invalidate()
        assert (await one_again.complete(**ask())).cache is CacheStatus.HIT
    assert gateway.endpoint("a").calls == 2


# -- Stats -----------------------------------------------------------------------------


async def test_stats_split_hits_by_tier_and_show_the_breaker(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    rc_a = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    rc_b = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    async with make_client(gateway, rc_a) as a, make_client(gateway, rc_b, l1=None) as b:
        for text, _ in itertools.product(("x", "y"), range(3)):
            await a.complete(**ask(text))
        await rc_a.flush()
        for text in ("x", "y"):
            await b.complete(**ask(text))
        assert (a.stats.l1_hits, a.stats.l2_hits, a.stats.misses) == (4, 0, 2)
        # Redis alone is no L1: its hits are L2 hits.
        assert (b.stats.l1_hits, b.stats.l2_hits) == (0, 2)
        snapshot = a.stats.as_dict()
        assert {k: snapshot[k] for k in ("l1_hits", "l2_hits", "cache_errors")} == {
            "l1_hits": 4,
            "l2_hits": 0,
            "cache_errors": 0,
        }
        assert (snapshot["breaker_state"], snapshot["breaker_states"]) == ("closed", ["closed"])


async def test_a_storm_answered_by_one_redis_read_counts_each_hit_in_redis(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Regression: one process's identical callers were all answered by one Redis read
    # (the first caller's, shared through the flight): ten hits, one l2_hit.
    rc_a = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    async with make_client(gateway, rc_a) as a:
        await a.complete(**ask("stored by another process"))
    rc_b = RedisCache.from_url(redis_url, prefix=redis_prefix, **PATIENT)
    async with make_client(gateway, rc_b) as b:
        await b.complete(**ask("warm"))
        storm = await asyncio.gather(
            *(b.complete(**ask("stored by another process")) for _ in range(10))
        )
        stats = b.stats
    assert (stats.hits, stats.l1_hits, stats.l2_hits) == (10, 0, 10)
    assert [(answer.cache, answer.tier) for answer in storm] == [(CacheStatus.HIT, 1)] * 10
    assert sum(stats.cache.hits) < 10  # the tiers' own reads: the storm shared them

    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as memory_only:
        await memory_only.complete(**ask())
        assert memory_only.stats.breaker_state is None
        assert memory_only.stats.as_dict()["failed_cache_writes"] == 0


async def test_warm_counts_answers_no_tier_kept_as_unstored_and_lines_given_twice_as_skipped(
    gateway: FakeGateway,
) -> None:
    # Regression: every answer sent upstream counted as warmed ("answered and stored"),
    # with the shared tier down; and a line given twice counted as warmed twice.
    dead = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", **PATIENT)
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=dead) as client:
        report = await client.warm([ask(f"q{i}") for i in range(5)], concurrency=2)
    assert (report.warmed, report.unstored, report.failed) == (0, 5, 0)
    assert gateway.total_calls == 5
    lines = [ask("again"), ask("again"), ask("other")]
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        report = await client.warm(lines, concurrency=3)
    assert (report.warmed, report.skipped, report.unstored) == (2, 1, 0)

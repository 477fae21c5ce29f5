"""MemcachedCache beyond the backend contract: URLs, keys, TTLs, generations and leases.

The contract itself (``test_contract.py``) runs on Memcached too; here is what is
Memcached's own, against a real memcached.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import emcache
import pytest
from hypothesis import given
from hypothesis import strategies as st

import limpet
from limpet.cache.base import CacheBackend
from limpet.cache.generations import GenerationStore
from limpet.cache.memcached.backend import (
    RELATIVE_TTL_LIMIT,
    MemcachedCache,
    memcached_expiry,
    parse_memcached_url,
)
from limpet.cache.memcached.leases import MemcachedFlightStore, _lease_exptime
from limpet.errors import CacheUnavailableError, ConfigurationError, RateLimitError
from limpet.flight.store import FlightNotice, FlightOutcome, FlightStore
from tests.memcached_servers import MemcachedServer

# For tests about what is stored, not about speed: a busy machine must not time them out.
PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}

# -- pure parts --------------------------------------------------------------------------


def test_url_names_every_server_with_the_default_port() -> None:
    assert parse_memcached_url("memcached://a:11211,b,[::1]:11300") == [
        ("a", 11211),
        ("b", 11211),
        ("::1", 11300),
    ]


@pytest.mark.parametrize(
    "url",
    ["redis://a:6379", "a:11211", "memcached://", "memcached://a:0", "memcached://a:x", "m://a"],
)
def test_a_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"MemcachedCache\.url"):
        MemcachedCache.from_url(url)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("prefix", ""),
        ("prefix", "with space"),
        ("prefix", "x" * 101),
        ("read_timeout", 0),
        ("write_timeout", -1.0),
        ("max_connections", 0),
        ("max_value_size", True),
    ],
)
def test_a_bad_option_is_a_configuration_error_naming_it(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"MemcachedCache\.{option}"):
        MemcachedCache(url="memcached://a", **{option: value})  # type: ignore[arg-type]


def test_exactly_one_of_url_and_client() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        MemcachedCache()
    with pytest.raises(ConfigurationError, match=r"emcache\.Client"):
        MemcachedCache(client=object())  # type: ignore[arg-type]


def test_it_is_exported_lazily_and_keeps_every_shared_role() -> None:
    assert limpet.MemcachedCache is MemcachedCache
    cache = MemcachedCache.from_url("memcached://127.0.0.1:1")
    assert isinstance(cache, CacheBackend)
    assert isinstance(cache, GenerationStore)
    assert isinstance(cache.flight_store, FlightStore)
    assert "127.0.0.1:1" in repr(cache)


@given(ttl=st.floats(min_value=1e-6, max_value=10 * 365 * 86400.0), now=st.floats(0, 2e9))
def test_expiry_is_relative_up_to_30_days_then_absolute(ttl: float, now: float) -> None:
    exptime = memcached_expiry(ttl, now)
    assert exptime >= 1  # 0 would never expire
    if ttl <= RELATIVE_TTL_LIMIT:
        assert exptime == max(math.ceil(ttl), 1)
    else:
        # An absolute time, never earlier than the TTL asks.
        assert exptime > RELATIVE_TTL_LIMIT
        assert exptime - now >= ttl


@given(lease=st.floats(min_value=1e-3, max_value=86400.0))
def test_a_lease_lives_at_least_as_long_as_asked(lease: float) -> None:
    # Memcached's clock ticks in whole seconds: an item set just before a tick with an
    # exptime of n lives a little over n - 1 seconds, so a lease gets one more.
    assert _lease_exptime(lease) - 1 >= lease
    assert _lease_exptime(lease) <= lease + 2


def test_an_infinite_ttl_never_expires() -> None:
    assert memcached_expiry(math.inf, 1e9) == 0


@given(key=st.text(max_size=300))
def test_every_key_becomes_a_valid_memcached_key(key: str) -> None:
    cache = MemcachedCache.from_url("memcached://127.0.0.1:1", prefix="p:")
    for full in (cache.entry_key(key), cache.lock_key(key), cache.generation_key(key)):
        assert len(full) <= 250
        assert all(0x21 <= byte <= 0x7E for byte in full)
    assert len({cache.entry_key(key), cache.lock_key(key), cache.generation_key(key)}) == 3


def test_a_hashed_key_cannot_collide_with_a_plain_one() -> None:
    cache = MemcachedCache.from_url("memcached://127.0.0.1:1", prefix="p:")
    hashed = cache.entry_key("with space").decode()
    plain_lookalike = hashed.removeprefix("p:e:")
    assert cache.entry_key(plain_lookalike) != hashed.encode()


# -- against a real memcached -------------------------------------------------------------


@pytest.fixture
async def cache(memcached_url: str, memcached_prefix: str) -> AsyncIterator[MemcachedCache]:
    async with MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as mc:
        yield mc


@pytest.fixture
async def raw(memcached_url: str) -> AsyncIterator[emcache.Client]:
    host, port = parse_memcached_url(memcached_url)[0]
    client = await emcache.create_client([emcache.MemcachedHostAddress(host, port)])
    yield client
    await client.close()


@pytest.mark.memcached
async def test_a_ttl_over_30_days_is_stored_not_expired_at_once(
    cache: MemcachedCache, raw: emcache.Client
) -> None:
    await cache.set("long", b"v", 90 * 86400)
    await cache.flush()
    assert cache.failed_writes == 0
    item = await raw.get(cache.entry_key("long"))
    assert item is not None and item.value == b"v"


@pytest.mark.memcached
async def test_two_caches_share_entries(memcached_url: str, memcached_prefix: str) -> None:
    async with (
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as one,
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as two,
    ):
        await one.set("k", b"shared", 60)
        await one.flush()
        assert await two.get("k") == b"shared"


@pytest.mark.memcached
async def test_a_lent_client_is_used_and_left_open(
    raw: emcache.Client, memcached_prefix: str
) -> None:
    cache = MemcachedCache(client=raw, prefix=memcached_prefix, read_timeout=1.0)
    await cache.set("k", b"v", 60)
    await cache.aclose()
    assert not raw.closed
    item = await raw.get(cache.entry_key("k"))
    assert item is not None and item.value == b"v"


@pytest.mark.memcached
async def test_several_servers_share_the_keys(
    memcached_server_factory: Callable[..., MemcachedServer],
) -> None:
    servers = [memcached_server_factory(), memcached_server_factory()]
    url = "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    async with MemcachedCache.from_url(url, read_timeout=1.0, write_timeout=1.0) as mc:
        for i in range(100):
            await mc.set(f"k{i}", b"%d" % i, 60)
        await mc.flush()
        assert mc.failed_writes == 0
        for i in range(100):
            assert await mc.get(f"k{i}") == b"%d" % i
        for server in servers:
            async with MemcachedCache.from_url(server.url, read_timeout=1.0) as alone:
                held = [i for i in range(100) if await alone.get(f"k{i}") is not None]
            assert 10 < len(held) < 90  # each server holds a share, not all or nothing


@pytest.mark.memcached
@pytest.mark.parametrize("servers", [1, 2])
async def test_a_burst_of_reads_is_batched_and_each_reader_gets_its_own_keys_value(
    memcached_server_factory: Callable[..., MemcachedServer], servers: int
) -> None:
    # 3,000 readers in one loop turn over 400 keys, 100 of them absent, on one server
    # and on two: a few multi-key gets, not a get per reader, and every reader gets the
    # value of its own key (a batch's values are matched to its keys by key, never by
    # position in the reply), or None.
    started = [memcached_server_factory() for _ in range(servers)]
    url = "memcached://" + ",".join(f"127.0.0.1:{s.port}" for s in started)
    async with MemcachedCache.from_url(url, **PATIENT) as mc:
        for i in range(300):
            await mc.set(f"k{i}", b"value of %d" % i, 60)
        await mc.flush()
        assert mc.failed_writes == 0
        keys = [f"k{(7 * n) % 400}" for n in range(3_000)]
        found = await asyncio.gather(*(mc.get(key) for key in keys))
        for key, value in zip(keys, found, strict=True):
            i = int(key[1:])
            assert value == (b"value of %d" % i if i < 300 else None), key
        assert 0 < mc._reads.batches < 100
        assert mc.breaker_state == "closed"


# -- generations ---------------------------------------------------------------------------


@pytest.mark.memcached
async def test_generations_start_somewhere_and_grow_by_one(cache: MemcachedCache) -> None:
    [first] = await cache.generations(["m"])
    assert await cache.generations(["m"]) == [first]  # created once, then read
    assert await cache.bump_generation("m") == first + 1
    assert await cache.generations(["m", "m"]) == [first + 1, first + 1]


@pytest.mark.memcached
async def test_bumping_a_missing_counter_creates_it(cache: MemcachedCache) -> None:
    bumped = await cache.bump_generation("never-read")
    assert await cache.generations(["never-read"]) == [bumped]


@pytest.mark.memcached
async def test_an_evicted_generation_comes_back_higher_in_every_process(
    memcached_url: str, memcached_prefix: str, raw: emcache.Client
) -> None:
    async with (
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as one,
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as fresh,
    ):
        [old] = await one.generations(["m"])
        bumped = await one.bump_generation("m")
        # Pretend the counter far in the future (a thousand invalidations a second for a
        # long time), then evicted: the process that saw it re-creates it above it.
        await raw.set(one.generation_key("m"), b"%d" % (bumped + 10**9))
        [future] = await one.generations(["m"])
        await raw.delete(one.generation_key("m"))  # evicted
        [recreated] = await one.generations(["m"])
        assert recreated > future > bumped > old
        # A process that never saw it reads the same counter, not one of its own.
        assert await fresh.generations(["m"]) == [recreated]
        await raw.delete(one.generation_key("m"))
        # A process that never saw it re-creates it from the clock: above the old values.
        [from_clock] = await fresh.generations(["m"])
        assert from_clock > bumped


@pytest.mark.memcached
async def test_a_counter_recreated_below_a_value_seen_is_raised_above_it(
    cache: MemcachedCache, raw: emcache.Client
) -> None:
    [held] = await cache.generations(["m"])
    key = cache.generation_key("m")
    # Lost, then re-created lower by a process whose clock is behind, and bumped there.
    await raw.set(key, b"%d" % (held - 60_000_000))
    [read] = await cache.generations(["m"])
    assert read == held + 1  # raised above what this process held: an invalidation
    item = await raw.get(key)
    assert item is not None and int(item.value) == held + 1
    await raw.set(key, b"%d" % (held - 60_000_000))
    assert await cache.bump_generation("m") == held + 2  # above the raised value
    await raw.set(key, b"%d" % (held + 100))  # another process raised it higher
    assert await cache.generations(["m"]) == [held + 100]  # never lowered


@pytest.mark.memcached
async def test_racing_processes_agree_on_a_new_counter(
    memcached_url: str, memcached_prefix: str
) -> None:
    caches = [
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) for _ in range(5)
    ]
    try:
        values = await asyncio.gather(*(c.generations(["m"]) for c in caches))
        assert len({v[0] for v in values}) == 1
    finally:
        for c in caches:
            await c.aclose()


# -- leases ----------------------------------------------------------------------------


@pytest.fixture
def store(cache: MemcachedCache) -> MemcachedFlightStore:
    return cache.flight_store


@pytest.mark.memcached
async def test_one_lease_per_key_and_only_its_holder_renews_or_drops_it(
    store: MemcachedFlightStore,
) -> None:
    assert await store.acquire("k", "me", 5.0)
    assert not await store.acquire("k", "you", 5.0)
    taken = await store.holder("k")
    assert taken is not None and taken.startswith("me")
    assert await store.renew("k", "me", 5.0)
    renewed = await store.holder("k")
    assert renewed is not None and renewed.startswith("me") and renewed != taken
    assert not await store.renew("k", "you", 5.0)
    await store.release("k", "you", FlightNotice(FlightOutcome.ABANDONED), None, 0)
    assert await store.holder("k") == renewed  # not yours to drop
    await store.release("k", "me", FlightNotice(FlightOutcome.ABANDONED), None, 0)
    assert await store.holder("k") is None
    assert not await store.renew("k", "me", 5.0)
    assert await store.acquire("k", "you", 5.0)


@pytest.mark.memcached
async def test_a_lease_nobody_renewed_is_taken_over_by_one_follower(
    store: MemcachedFlightStore,
) -> None:
    assert await store.acquire("k", "stuck", 5.0)
    seen = await store.holder("k")
    assert seen is not None
    wins = [await store.take_over("k", seen, f"follower-{i}", 5.0) for i in range(3)]
    assert wins == [True, False, False]  # the first swap changed what the others saw
    now = await store.holder("k")
    assert now is not None and now.startswith("follower-0")
    assert not await store.take_over("k", "never-seen", "late", 5.0)
    assert await store.renew("k", "follower-0", 5.0)
    assert not await store.renew("k", "stuck", 5.0)  # the old leader lost it


@pytest.mark.memcached
async def test_a_lease_of_any_bytes_is_taken_over(
    cache: MemcachedCache, store: MemcachedFlightStore, raw: emcache.Client
) -> None:
    """A lease another writer left, not UTF-8: read lossily, the takeover's compare-and-
    swap never matched it, and every follower waited its whole ``follow_timeout``."""
    await raw.set(cache.lock_key("k"), b"\xff\xfe stray:0", exptime=3600)
    seen = await store.holder("k")
    assert seen is not None
    assert await store.take_over("k", seen, "follower", 5.0)
    now = await store.holder("k")
    assert now is not None and now.startswith("follower")


@pytest.mark.memcached
async def test_release_stores_the_entry_then_tells_the_follower(
    cache: MemcachedCache, store: MemcachedFlightStore
) -> None:
    assert await store.acquire("k", "leader", 5.0)
    watch = await store.watch("k")
    waiting = asyncio.ensure_future(watch.next())
    await store.release("k", "leader", FlightNotice(FlightOutcome.STORED), b"entry", 60)
    notice = await asyncio.wait_for(waiting, 5.0)
    assert notice.outcome is FlightOutcome.STORED
    assert await cache.get("k") == b"entry"
    assert await store.holder("k") is None
    watch.close()


@pytest.mark.memcached
async def test_a_final_error_reaches_the_follower(store: MemcachedFlightStore) -> None:
    assert await store.acquire("k", "leader", 5.0)
    watch = await store.watch("k")
    error = RateLimitError("slow down", status_code=429, body="{}", endpoint="a")
    await store.release("k", "leader", FlightNotice(FlightOutcome.FAILED, error), None, 0)
    notice = await asyncio.wait_for(watch.next(), 5.0)
    assert notice.outcome is FlightOutcome.FAILED
    assert isinstance(notice.error, RateLimitError)
    assert notice.error.status_code == 429
    # Dated, so that a follower can tell it from a replay of an earlier flight's.
    assert notice.sent_at is not None and abs(notice.sent_at - time.time()) < 60


@pytest.mark.memcached
async def test_a_stale_notice_of_an_earlier_flight_is_not_this_ones(
    store: MemcachedFlightStore,
) -> None:
    error = RateLimitError("old", status_code=429, body="{}", endpoint="a")
    assert await store.acquire("k", "first", 5.0)
    await store.release("k", "first", FlightNotice(FlightOutcome.FAILED, error), None, 0)
    assert await store.acquire("k", "second", 5.0)
    watch = await store.watch("k")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await watch.next()  # the first flight's notice is not the second's
    await store.release("k", "second", FlightNotice(FlightOutcome.STORED), b"v", 60)
    assert (await asyncio.wait_for(watch.next(), 5.0)).outcome is FlightOutcome.STORED


@pytest.mark.memcached
async def test_a_leaders_notice_is_told_once_then_the_watch_waits_for_the_next_leader(
    store: MemcachedFlightStore,
) -> None:
    """The first leader gives up and another process takes the lease before the follower
    polls: the first's notice stays readable for seconds. Told again, it ended every wait
    for the second leader at once, and the follower polled Memcached without a pause for
    as long as the second one worked."""
    assert await store.acquire("k", "first", 5.0)
    watch = await store.watch("k")
    await store.release("k", "first", FlightNotice(FlightOutcome.ABANDONED), None, 0)
    assert await store.acquire("k", "second", 5.0)
    assert (await asyncio.wait_for(watch.next(), 5.0)).outcome is FlightOutcome.ABANDONED
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await watch.next()  # the second leader works on: no news
    await store.release("k", "second", FlightNotice(FlightOutcome.STORED), b"v", 60)
    assert (await asyncio.wait_for(watch.next(), 5.0)).outcome is FlightOutcome.STORED
    watch.close()


@pytest.mark.memcached
async def test_a_lease_gone_without_a_notice_is_abandoned(
    cache: MemcachedCache, store: MemcachedFlightStore, raw: emcache.Client
) -> None:
    assert await store.acquire("k", "doomed", 5.0)
    watch = await store.watch("k")
    await raw.delete(cache.lock_key("k"))  # the leader died and its lease ran out
    notice = await asyncio.wait_for(watch.next(), 5.0)
    assert notice.outcome is FlightOutcome.ABANDONED


@pytest.mark.memcached
async def test_an_oversized_entry_is_not_shared_and_followers_call_at_once(
    memcached_url: str, memcached_prefix: str
) -> None:
    async with MemcachedCache.from_url(
        memcached_url, prefix=memcached_prefix, max_value_size=10, **PATIENT
    ) as mc:
        store = mc.flight_store
        assert await store.acquire("k", "leader", 5.0)
        watch = await store.watch("k")
        await store.release("k", "leader", FlightNotice(FlightOutcome.STORED), b"x" * 11, 60)
        notice = await asyncio.wait_for(watch.next(), 5.0)
        assert notice.outcome is FlightOutcome.UNSHARED
        assert await mc.get("k") is None


class LostReply(MemcachedCache):
    """Its next command runs, but its reply is lost (a stall past the command's budget)."""

    lose_next = False

    async def _lost(self, ran: Any) -> Any:
        result = await ran
        if self.lose_next:
            self.lose_next = False
            raise CacheUnavailableError("memcached set timed out (its reply lost)")
        return result

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self._lost(super().run(*args, **kwargs))


@pytest.mark.memcached
async def test_an_entry_whose_write_may_have_landed_is_left_to_one_follower(
    memcached_url: str, memcached_prefix: str
) -> None:
    """The entry's write timed out: it may have landed. Not "unshared" (every follower
    would call upstream at once) but abandoned: one follower takes over, and looks first."""
    async with LostReply.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as mc:
        assert isinstance(mc, LostReply)
        store = mc.flight_store
        assert await store.acquire("k", "leader", 5.0)
        watch = await store.watch("k")
        mc.lose_next = True  # the entry's write
        await store.release("k", "leader", FlightNotice(FlightOutcome.STORED), b"entry", 60)
        notice = await asyncio.wait_for(watch.next(), 5.0)
        assert notice.outcome is FlightOutcome.ABANDONED
        assert await mc.get("k") == b"entry"  # it had landed: the follower finds it


@pytest.mark.memcached
async def test_a_closed_cache_is_unavailable(cache: MemcachedCache) -> None:
    await cache.aclose()
    with pytest.raises(CacheUnavailableError, match="closed"):
        await cache.get("k")


@pytest.mark.memcached
async def test_a_notice_is_believed_only_with_its_signature(
    memcached_url: str, memcached_prefix: str
) -> None:
    error = RateLimitError("slow down", status_code=429, body="{}", endpoint="a")
    failed = FlightNotice(FlightOutcome.FAILED, error)
    async with (
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, hmac_key=b"k1") as one,
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, hmac_key=b"k2") as two,
        MemcachedCache.from_url(memcached_url, prefix=memcached_prefix) as plain,
    ):
        for leader in (one, two, plain):
            assert await leader.flight_store.acquire("k", "leader", 5.0)
            await leader.flight_store.release("k", "leader", failed, None, 0)
            raw = await leader.flight_store.peek("k")
            assert raw[0] is not None
            token, notice = one.flight_store.decode("k", raw[0])
            if leader is one:
                assert (token, notice.verified) == (b"leader", True)
                assert isinstance(notice.error, RateLimitError)
                assert notice.error.message == "slow down"
            else:  # signed with another key, or not at all: no notice
                assert (token, notice.verified, notice.error) == (None, False, None)
            token, notice = plain.flight_store.decode("k", raw[0])
            assert not notice.verified  # a cache without a key verifies nothing

"""Deletes a shared tier owes (``limpet.cache.owed_deletes``): a forgotten or refreshed
answer is never served again from Redis or Memcached, whatever the tier could not take
when it was forgotten or refreshed: a delete while its breaker was open, a delete racing
a write already on its way; a refresh (``TieredCache.set(replacing=True)``) whose write
the open breaker refused. Real servers; breakers on a fake clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis
import redis.asyncio

from limpet.cache.breaker import CircuitBreaker
from limpet.cache.memcached.backend import MemcachedCache
from limpet.cache.memory import MemoryCache
from limpet.cache.redis.backend import RedisCache
from limpet.cache.tiered import TieredCache
from limpet.errors import CacheUnavailableError
from tests.cache.test_redis_faults import entry
from tests.fakes import COOLDOWN, FakeClock
from tests.redis_servers import RedisServer, redis_answers, state


def trip(breaker: CircuitBreaker) -> None:
    """Open the breaker, as a blip of failed calls does (the server itself is healthy)."""
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()


async def stored(url: str, redis_key: str) -> bool:
    """Whether Redis holds ``redis_key``, asked past every cache (another process)."""
    async with redis.asyncio.Redis.from_url(url) as client:
        return bool(await client.exists(redis_key))


# -- forget() while the breaker is open ------------------------------------------------


@pytest.mark.redis
async def test_a_delete_while_the_redis_breaker_is_open_is_sent_once_it_closes(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker)
    tiered = TieredCache(MemoryCache(), rc)
    try:
        await tiered.set("k", entry(1))
        await tiered.flush()
        trip(breaker)
        await tiered.delete("k")  # forget(): nothing reaches Redis now
        clock.advance(COOLDOWN)
        # Not served here meanwhile, nor probed for: the tier owes its delete.
        assert await tiered.get("k") is None
        await rc.get("other")  # Redis takes commands again: the probe closes the breaker
        await rc.flush()
        assert state(rc) == "closed"
        assert not await stored(redis_url, rc.redis_key("k"))
        assert rc.pending_deletes == 0
    finally:
        await tiered.aclose()


@pytest.mark.memcached
async def test_a_delete_while_the_memcached_breaker_is_open_is_sent_once_it_closes(
    memcached_url: str, memcached_prefix: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, breaker=breaker)
    other = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix)
    tiered = TieredCache(MemoryCache(), mc)
    try:
        await tiered.set("k", entry(1))
        await tiered.flush()
        assert await other.get("k") is not None
        trip(breaker)
        await tiered.delete("k")
        clock.advance(COOLDOWN)
        assert await tiered.get("k") is None
        await mc.get("other")
        await mc.flush()
        assert await other.get("k") is None  # another process: gone
        assert mc.pending_deletes == 0
    finally:
        await tiered.aclose()
        await other.aclose()


# -- forget() racing a write in flight to a stalled server ------------------------------


def stall_for(port: int, seconds: float) -> None:
    with redis.Redis(host="127.0.0.1", port=port) as client:
        client.execute_command("DEBUG", "SLEEP", seconds)


def wait_until_stalled(port: int) -> None:
    give_up = time.monotonic() + 5.0
    while redis_answers("127.0.0.1", port, timeout=0.05):
        assert time.monotonic() < give_up, "redis-server never stalled"


async def busy(seconds: float) -> None:
    """A busy service: CPU work in the event loop's callbacks (the server-time budget of
    the batch in flight stretches, as it should; no wall-clock wait may outlast it)."""
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        time.sleep(0.02)  # noqa: ASYNC251 - blocking on purpose: the work
        await asyncio.sleep(0)


@pytest.mark.redis
async def test_a_delete_racing_a_write_in_flight_is_sent_after_it_lands(
    redis_server_factory: Callable[..., RedisServer], breaker: CircuitBreaker, clock: FakeClock
) -> None:
    server = redis_server_factory("--enable-debug-command", "yes")
    # A queue of one: ``wait_for_write_room()`` returns once the writer has taken a write.
    rc = RedisCache.from_url(server.url, write_timeout=0.2, max_pending_writes=1, breaker=breaker)
    tiered = TieredCache(MemoryCache(), rc)
    try:
        await tiered.set("k", entry(1))
        await tiered.flush()
        sleeper = asyncio.create_task(asyncio.to_thread(stall_for, server.port, 1.5))
        await asyncio.to_thread(wait_until_stalled, server.port)
        await tiered.set("k", entry(2))  # cache="refresh": its SET goes out, and waits
        await rc.wait_for_write_room()  # the writer took it
        work = asyncio.create_task(busy(1.0))
        await tiered.delete("k")  # forget() while that SET is on its way
        assert await tiered.get("k") is None
        await work
        await sleeper  # Redis is back: the SET landed, after forget() returned
        clock.advance(COOLDOWN)  # the stall may have opened the breaker
        await rc.get("other")
        await rc.flush()
        assert not await stored(server.url, rc.redis_key("k"))
        assert rc.pending_deletes == 0
    finally:
        await tiered.aclose()


# -- cache="refresh" whose write the tier cannot take ----------------------------------


@pytest.mark.redis
async def test_a_refresh_refused_by_an_open_breaker_leaves_no_older_answer(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker)
    tiered = TieredCache(MemoryCache(), rc)
    other = TieredCache(MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix))
    try:
        await tiered.set("k", entry(1))
        await tiered.flush()
        trip(breaker)
        await tiered.set("k", entry(2), replacing=True)  # the refresh: not written
        assert tiered.stats.unwritten == 1
        clock.advance(COOLDOWN)
        await rc.get("other")
        await rc.flush()
        assert await other.get("k") is None  # never the answer the refresh replaced
        assert rc.pending_deletes == 0
    finally:
        await tiered.aclose()
        await other.aclose()


# -- the bound -------------------------------------------------------------------------


def test_past_its_bound_a_tier_owes_a_clear_which_covers_every_key() -> None:
    from limpet.cache.owed_deletes import OwedDeletes

    owed = OwedDeletes(limit=2)
    assert owed.owe("a") and owed.owe("b") and owed.owe("a")
    assert not owed.covers("z") and len(owed) == 2
    assert not owed.owe("c")  # one more: the tier is to be cleared
    assert owed.clear_owed and owed.covers("z") and len(owed) == 0
    upto = owed.begin_clear()
    assert owed.owe("d")  # owed while the clear is on its way: kept, it may miss it
    owed.end_clear(upto, landed=True)
    # A tuple: mypy would otherwise keep clear_owed narrowed to True from above.
    assert (owed.clear_owed, owed.owes("d"), owed.covers("a")) == (False, True, False)
    owed.settle(owed.take(10))
    assert not owed.active


def test_a_delete_settles_only_what_it_was_sent_for() -> None:
    from limpet.cache.owed_deletes import OwedDeletes

    owed = OwedDeletes(limit=10)
    owed.owe("a")
    sent = owed.take(10)
    owed.owe("a")  # owed again while that delete was on its way
    owed.settle(sent)
    assert owed.owes("a") and owed.active
    upto = owed.begin_clear()
    owed.end_clear(upto, landed=False)
    assert owed.clear_owed and owed.covers("b")


@pytest.mark.redis
async def test_a_tier_owing_more_deletes_than_its_queue_holds_is_cleared_once_back(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix, max_pending_writes=1, breaker=breaker)
    try:
        await rc.set("kept", b"old", 60)
        await rc.flush()
        trip(breaker)
        for key in ("a", "b"):  # forgotten: the second is past the bound
            with pytest.raises(CacheUnavailableError):
                await rc.delete(key)
        assert await rc.get("kept") is None  # nothing read from a tier owing a clear
        clock.advance(COOLDOWN)
        await rc.generations(["x"])  # the probe: Redis takes commands again
        await rc.flush()
        assert not await stored(redis_url, rc.redis_key("kept"))
        assert await stored(redis_url, rc.generation_key("x"))  # kept, as clear() keeps them
        assert await rc.get("kept") is None and rc.pending_deletes == 0
    finally:
        await rc.aclose()

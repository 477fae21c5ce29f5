"""A lease a process no longer needs never makes another process wait: its release drops
it and sends the notice even when the shared tier refuses the entry (a full Redis under
``noeviction``, an item too large for Memcached), and a release that could not get
through (Redis paused while a lease was maybe taken) is sent again once the tier
answers. Each flight has its own cache on a private server, so two of them in one
process share nothing but the server, as two processes would; every lease is 30 s and
every follower is bounded by a guard far shorter, so finishing within it means it never
waited on a lease.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis.asyncio
import redis.exceptions

import limpet.flight.shared
from limpet import FlightConfig
from limpet.cache.memcached.backend import DEFAULT_MAX_VALUE_SIZE, MemcachedCache
from limpet.cache.redis.backend import RedisCache
from limpet.flight.shared import RedisFlight
from tests.memcached_servers import MemcachedServer
from tests.redis_servers import RedisServer, filled


def signal_server(server: RedisServer, signum: signal.Signals) -> None:
    """SIGSTOP or SIGCONT the fixture's own redis-server process."""
    process = server._process
    assert process is not None
    os.kill(process.pid, signum)


KEY = "sha256:" + "cd" * 32
# Only notices wake a follower: a 30 s lease and poll, far past every guard below.
SLOW = FlightConfig(lease=30.0, poll=30.0, follow_timeout=60.0)
GUARD = 10.0


class Upstream:
    """A ``lead`` for ``RedisFlight.do`` that counts its calls and can be held open."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.calls = 0
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self) -> tuple[bytes, bytes | None, float]:
        self.calls += 1
        self.started.set()
        await self.go.wait()
        return self.answer, self.answer, 60.0


class Reader:
    """A ``read`` for ``RedisFlight.do``; ``looked`` is set once it found nothing (the
    follower then watches for the notice)."""

    def __init__(self, cache: RedisCache | MemcachedCache) -> None:
        self.cache = cache
        self.looked = asyncio.Event()

    async def __call__(self) -> bytes | None:
        data = await self.cache.get(KEY)
        if data is None:
            self.looked.set()
        return data


@dataclass
class Held:
    """Two processes' flights of ``KEY``: the leader's call held upstream (``upstream``,
    until ``upstream.go`` is set), the other's following it (``mine``, its own call, is
    made only if it takes over)."""

    led: asyncio.Task[tuple[bytes, bool]]
    followed: asyncio.Task[tuple[bytes, bool]]
    upstream: Upstream
    mine: Upstream


async def leader_held_follower_watching(
    leading: RedisCache | MemcachedCache, following: RedisCache | MemcachedCache, answer: bytes
) -> Held:
    """``Held``, once the follower has looked for the entry and found none: from here it
    waits for the leader's notice."""
    upstream = Upstream(answer)
    upstream.go.clear()
    leader = RedisFlight[bytes](leading.flight_store, SLOW)
    led = asyncio.create_task(leader.do(KEY, upstream, Reader(leading)))
    await upstream.started.wait()
    mine = Upstream(b"the follower's own answer")
    reader = Reader(following)
    follower = RedisFlight[bytes](following.flight_store, SLOW)
    followed = asyncio.create_task(follower.do(KEY, mine, reader))
    await reader.looked.wait()
    return Held(led, followed, upstream, mine)


@pytest.mark.redis
async def test_a_full_redis_refusing_the_entry_still_drops_the_lease_and_wakes_followers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    async with (
        RedisCache.from_url(server.url) as leading,
        RedisCache.from_url(server.url) as following,
    ):
        held = await leader_held_follower_watching(leading, following, b"the leader's answer")
        async with filled(server.url):
            held.upstream.go.set()
            assert await held.led == (b"the leader's answer", True)
            # Told the entry is not there: it calls at once instead of waiting 30 s.
            async with asyncio.timeout(GUARD):
                assert await held.followed == (b"the follower's own answer", True)
        raw = redis.asyncio.Redis.from_url(server.url)
        try:
            assert await raw.exists(leading.lock_key(KEY)) == 0
            assert await raw.exists(leading.redis_key(KEY)) == 0  # refused, not stored
        finally:
            await raw.aclose()
    assert held.upstream.calls == 1 and held.mine.calls == 1


@pytest.mark.memcached
@pytest.mark.parametrize(
    ("limit", "size"),
    [
        (DEFAULT_MAX_VALUE_SIZE, 600_000),  # over the server's -I 512k, under the cache's own limit
        (512 * 1024, 512 * 1024 - 16),  # under both limits, over the server's with overhead
    ],
)
async def test_a_memcached_refusing_the_entry_still_drops_the_lease_and_wakes_followers(
    memcached_server_factory: Callable[..., MemcachedServer], limit: int, size: int
) -> None:
    server = memcached_server_factory("-I", "512k", "-m", "64")
    async with (
        MemcachedCache.from_url(server.url, max_value_size=limit) as leading,
        MemcachedCache.from_url(server.url, max_value_size=limit) as following,
    ):
        assert size <= leading.max_value_size  # sent: the server is what refuses it
        held = await leader_held_follower_watching(leading, following, b"x" * size)
        held.upstream.go.set()
        assert await held.led == (held.upstream.answer, True)
        async with asyncio.timeout(GUARD):
            assert await held.followed == (b"the follower's own answer", True)
        # Told nothing is there to read, it called at once, with no lease to take.
        assert await following.flight_store.holder(KEY) is None
    assert held.upstream.calls == 1 and held.mine.calls == 1


@pytest.mark.redis
async def test_a_lease_taken_while_redis_was_paused_is_released_once_it_resumes(
    redis_server: RedisServer,
) -> None:
    # Redis stops (SIGSTOP: a long fork, a slow script, a VM pause) while a flight takes
    # its lease: the acquire is on the wire, its reply late, so the flight leads alone
    # and its release, on a fresh connection, cannot get through either. Once Redis
    # resumes it runs the acquire, and a 30 s lease nobody holds is left behind.
    async with (
        RedisCache.from_url(redis_server.url) as pausing,
        RedisCache.from_url(redis_server.url) as other,
    ):
        leader = RedisFlight[bytes](pausing.flight_store, SLOW)
        upstream = Upstream(b"the answer")
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await pausing.delete("warm the pool")  # so the acquire goes out at once
            signal_server(redis_server, signal.SIGSTOP)
            try:
                assert await leader.do(KEY, upstream, Reader(pausing)) == (b"the answer", True)
                assert leader.unreleased == 1
            finally:
                signal_server(redis_server, signal.SIGCONT)
            # A round trip on a new connection: Redis has run what it had been sent,
            # the acquire included.
            assert await raw.ping()
            follower = RedisFlight[bytes](other.flight_store, SLOW)
            mine = Upstream(b"the other process's answer")
            async with asyncio.timeout(GUARD):
                found = await follower.do(KEY, mine, Reader(other))
            # It led at once, or followed until the lease was released again (its notice
            # woke it); either way it called upstream itself, and waited no lease.
            assert found == (b"the other process's answer", True)
            assert mine.calls == 1
            assert await raw.exists(pausing.lock_key(KEY)) == 0
        finally:
            await leader.aclose()
            await raw.aclose()


async def test_a_lease_whose_release_failed_is_released_when_the_flight_closes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: aclose() forgot the releases queued to be sent again, with the store
    # back by then: a follower in another process waited the whole lease.
    monkeypatch.setattr(limpet.flight.shared, "_RETRY_FIRST", 3600.0)  # no try before
    async with RedisCache.from_url(redis_server.url) as pausing:
        leader = RedisFlight[bytes](pausing.flight_store, SLOW)
        raw = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await pausing.delete("warm the pool")  # so the acquire goes out at once
            signal_server(redis_server, signal.SIGSTOP)
            try:
                assert await leader.do(KEY, Upstream(b"x"), Reader(pausing)) == (b"x", True)
                assert leader.unreleased == 1
            finally:
                signal_server(redis_server, signal.SIGCONT)
            assert await raw.ping()  # Redis has run what it was sent: the lease is taken
            assert await raw.exists(pausing.lock_key(KEY)) == 1
            await leader.aclose()  # before the release's next try
            assert await raw.exists(pausing.lock_key(KEY)) == 0
        finally:
            await leader.aclose()
            await raw.aclose()

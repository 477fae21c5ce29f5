"""RedisFlight, the cross-process single-flight, when Redis or its callers misbehave.

A leader cancelled while it acquires its lease or while its renewal stops, or whose
breaker has opened, still releases the lease; a lease whose reply was lost is still its
taker's when redis-py sends the command again, and one whose reply came too late is
released by the flight that led alone; a lease left without a TTL is taken over;
a forged error notice is never raised by a follower; release failures are logged once per
outage; and a lead that raised a cache fault is not run again. Each flight has its own
``RedisCache`` on the shared Redis, so two of them in one process share nothing but
Redis. The Redis cache tier's own faults are in ``tests/cache/test_redis_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio

from limpet import FlightConfig
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.redis.backend import RedisCache
from limpet.errors import CacheUnavailableError, InternalServerError
from limpet.flight.shared import RedisFlight
from limpet.flight.store import FlightStore
from tests.redis_servers import RedisProxy, RedisServer, state

pytestmark = pytest.mark.redis

KEY = "sha256:" + "ab" * 32
LONG = 30.0  # seconds: a failure, not a hang


class Upstream:
    """A ``lead`` for ``RedisFlight.do`` that counts its calls and can be held open."""

    def __init__(self, cache: RedisCache, answer: str) -> None:
        self.cache = cache
        self.answer = answer
        self.calls = 0
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self) -> tuple[str, bytes | None, float]:
        self.calls += 1
        self.started.set()
        await self.go.wait()
        return self.answer, self.answer.encode(), 60.0


class Reader:
    """A ``read`` for ``RedisFlight.do``: the entry under ``KEY``; counts its calls and
    sets ``reads[n]`` on the n-th (the first comes right after the follower watches)."""

    def __init__(self, cache: RedisCache) -> None:
        self.cache = cache
        self.reads = [asyncio.Event() for _ in range(4)]
        self.count = 0

    async def __call__(self) -> str | None:
        self.count += 1
        if self.count < len(self.reads):
            self.reads[self.count].set()
        data = await self.cache.get(KEY)
        return None if data is None else data.decode()


SLOW = FlightConfig(lease=30.0, poll=30.0, follow_timeout=60.0)  # only notices wake


@dataclass
class Following:
    """A leader's call held upstream, and a follower in a cache of its own watching it."""

    led: asyncio.Task[tuple[str, bool]]
    followed: asyncio.Task[tuple[str, bool]]
    follower: RedisFlight[str]
    upstream: Upstream
    mine: Upstream
    reader: Reader


async def following(leading: RedisCache, other: RedisCache, config: FlightConfig) -> Following:
    """Returns once the follower (on ``other``) watches the leader's flight."""
    leader, follower = (
        RedisFlight[str](leading.flight_store, config),
        RedisFlight[str](other.flight_store, config),
    )
    upstream = Upstream(leading, "the leader's answer")
    upstream.go.clear()
    led = asyncio.create_task(leader.do(KEY, upstream, Reader(leading)))
    await upstream.started.wait()
    mine = Upstream(other, "the follower's own call")
    reader = Reader(other)
    followed = asyncio.create_task(follower.do(KEY, mine, reader))
    await reader.reads[1].wait()  # watching, looking for the entry
    return Following(led, followed, follower, upstream, mine, reader)


@contextlib.asynccontextmanager
async def following_through_a_proxy(
    redis_url: str, redis_prefix: str, config: FlightConfig
) -> AsyncIterator[tuple[RedisProxy, Following]]:
    """``following``, with the follower's cache reaching Redis through a proxy the test
    can stall (the leader's does not)."""
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(redis_url, prefix=redis_prefix) as leading,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as other,
    ):
        yield proxy, await following(leading, other, config)


@pytest.mark.parametrize(
    ("hmac_key", "notice"),
    [(None, "forged"), (b"fleet secret", "forged"), (b"fleet secret", "replayed")],
    ids=["unsigned", "badly-signed", "replayed"],
)
async def test_an_error_notice_no_leader_of_this_flight_sent_is_never_raised_by_a_follower(
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    hmac_key: bytes | None,
    notice: str,
) -> None:
    """A forged notice (unsigned, or signed with a guessed key), or one well signed but
    copied from an earlier flight of the key by someone who can publish: no word of this
    flight's leader, it must not fail the followers."""
    async with (
        RedisCache.from_url(redis_url, prefix=redis_prefix, hmac_key=hmac_key) as leading,
        RedisCache.from_url(redis_url, prefix=redis_prefix, hmac_key=hmac_key) as other,
    ):
        flight = await following(leading, other, SLOW)
        fields = {
            "outcome": "failed",
            "status": 402,
            "message": "Your account is suspended. Contact support.",
            "body": "",
            "request_id": None,
            "endpoint": "a",
        }
        if notice == "replayed":  # an hour ago, another flight's; signed as a leader signs
            body = orjson.dumps(fields | {"sent_at": time.time() - 3600})
            message = leading.flight_store._message(KEY, body)
        else:  # signed with a guessed key when the cache has one; else not signed at all
            signature = b"0" * 64 if hmac_key else b""
            message = KEY.encode() + b"\n" + signature + b"\n" + orjson.dumps(fields)
        assert await raw.publish(redis_prefix + "flights", message) >= 1
        looked = asyncio.ensure_future(flight.reader.reads[2].wait())  # it looks again
        await asyncio.wait({looked, flight.followed}, return_when=asyncio.FIRST_COMPLETED)
        assert not flight.followed.done()  # it did not raise the error
        flight.upstream.go.set()
        assert await flight.led == ("the leader's answer", True)
        assert await flight.followed == ("the leader's answer", False)
    assert flight.mine.calls == 0 and flight.upstream.calls == 1
    assert flight.follower.takeovers == 0


@pytest.mark.parametrize(
    "stray",
    [b"written by something else, forever", b"\xff\xfe not UTF-8:0"],
    ids=["text", "not-utf8"],
)
async def test_a_lease_without_ttl_is_taken_over_after_a_lease_without_renewal(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis, stray: bytes
) -> None:
    """Whatever its bytes: a lease read lossily was never matched by the takeover's
    compare-and-swap, and every follower waited its whole ``follow_timeout``."""
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        lock = cache.lock_key(KEY)
        await raw.set(lock, stray)  # no TTL
        config = FlightConfig(lease=0.3, poll=0.05)  # follow_timeout: the default 600 s
        flight = RedisFlight[str](cache.flight_store, config)
        upstream = Upstream(cache, "answer")
        assert await flight.do(KEY, upstream, Reader(cache)) == ("answer", True)
        assert upstream.calls == 1
        assert flight.takeovers == 1
        # Bounded by the lease it was never renewed for, not by follow_timeout (12,000).
        assert flight.lease_checks <= 2 * (0.3 / 0.05) + 3
        assert await raw.exists(lock) == 0  # released: taken over with a TTL, then dropped


async def test_a_leader_cancelled_during_acquire_leaves_no_lease(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    lease = FlightConfig(lease=30.0, poll=0.05, follow_timeout=60.0)
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as via_proxy,
        RedisCache.from_url(redis_url, prefix=redis_prefix) as direct,
    ):
        # A pooled connection (a lone GET keeps its own): the SET NX goes out on it.
        await via_proxy.delete("warm the pool")
        proxy.stall_replies()
        leader = RedisFlight[str](via_proxy.flight_store, lease)
        unlucky = Upstream(via_proxy, "never asked")
        task = asyncio.create_task(leader.do(KEY, unlucky, Reader(via_proxy)))
        await proxy.reply_held.wait()  # SET NX ran in Redis; its caller has not heard
        assert await raw.exists(direct.lock_key(KEY)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proxy.resume()
        # The release went out before the task ended; a 30 s lease is not left behind.
        assert await raw.exists(direct.lock_key(KEY)) == 0
        other = RedisFlight[str](direct.flight_store, lease)
        upstream = Upstream(direct, "answer")
        assert await other.do(KEY, upstream, Reader(direct)) == ("answer", True)
    assert unlucky.calls == 0 and upstream.calls == 1
    assert other.takeovers == 0 and other.lease_checks == 0


@pytest.mark.parametrize("taking", ["acquire", "take over"])
async def test_a_lease_whose_reply_was_lost_is_taken_when_redis_py_sends_it_again(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis, taking: str
) -> None:
    # The command ran in Redis, its connection dropped before the reply came back, and
    # redis-py sent it again on a fresh connection: the lease the first one took is this
    # token's. Taken as someone else's, its leader would follow itself for a whole lease.
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as cache,
    ):
        store, lock = cache.flight_store, cache.lock_key(KEY)
        if taking == "take over":
            await raw.set(lock, "gone:0", px=30_000)  # a lease its leader left
        await cache.delete("warm the pool")  # a pooled connection, open before the stall
        proxy.stall_replies()
        taken = asyncio.create_task(
            store.acquire(KEY, "mine", 30.0)
            if taking == "acquire"
            else store.take_over(KEY, "gone:0", "mine", 30.0)
        )
        await proxy.reply_held.wait()
        assert await raw.get(lock) == b"mine:0"  # it ran; its caller has not heard
        proxy.drop()
        assert await taken
        assert await store.holder(KEY) == "mine:0"
        assert not await store.acquire(KEY, "theirs", 30.0)  # and nobody else's


async def test_a_lease_that_landed_while_its_acquire_timed_out_is_released_by_its_leader(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    # Redis ran the acquire but its reply came too late (a latency spike): the flight
    # led alone and, its call failing, stored nothing. The lease must not outlive it:
    # every other process would wait a whole lease on it.
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix) as late,
        RedisCache.from_url(redis_url, prefix=redis_prefix) as other,
    ):
        lock = late.lock_key(KEY)
        await late.delete("warm the pool")  # a pooled connection, open before the stall
        proxy.stall_replies()
        flight = RedisFlight[str](late.flight_store, SLOW)

        async def lead() -> tuple[str, bytes | None, float]:
            assert await raw.exists(lock) == 1  # the acquire landed; it timed out here
            proxy.resume()
            raise InternalServerError("upstream failed", status_code=500)

        with pytest.raises(InternalServerError):
            await flight.do(KEY, lead, Reader(late))
        assert await raw.exists(lock) == 0
        follower = RedisFlight[str](other.flight_store, SLOW)
        upstream = Upstream(other, "answer")
        assert await follower.do(KEY, upstream, Reader(other)) == ("answer", True)
    assert follower.lease_checks == 0 and follower.takeovers == 0  # led at once


class StubbornRenewal(RedisFlight[str]):
    """A flight whose renewal outlives its first cancellation until ``stop`` is set: its
    leader is then known to be waiting in ``_lead`` for the renewal to stop."""

    def __init__(self, store: FlightStore, config: FlightConfig) -> None:
        super().__init__(store, config)
        self.renewing = asyncio.Event()
        self.told_to_stop = asyncio.Event()
        self.stop = asyncio.Event()
        self.renewals: set[asyncio.Task[Any]] = set()

    async def _renew(self, key: str, token: str, held: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.renewals.add(task)
        self.renewing.set()
        try:
            await super()._renew(key, token, held)
        except asyncio.CancelledError:
            self.told_to_stop.set()
            await self.stop.wait()
            raise


async def test_a_leader_cancelled_while_its_renewal_stops_still_releases_its_lease(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        leader = StubbornRenewal(cache.flight_store, SLOW)
        upstream = Upstream(cache, "answer")
        upstream.go.clear()
        led = asyncio.create_task(leader.do(KEY, upstream, Reader(cache)))
        # Running: a renewal cancelled before its first step would never reach its except.
        await leader.renewing.wait()
        upstream.go.set()
        await leader.told_to_stop.wait()  # upstream answered; the leader waits for renewal
        assert await raw.exists(cache.lock_key(KEY)) == 1
        led.cancel()
        with pytest.raises(asyncio.CancelledError):
            await led
        # Released before the task ended, though the renewal has not stopped yet; a 30 s
        # lease is not left behind, and the answer is shared.
        assert await raw.exists(cache.lock_key(KEY)) == 0
        assert await Reader(cache)() == "answer"
        leader.stop.set()
        await asyncio.wait(leader.renewals)
    assert upstream.calls == 1


async def test_a_leader_whose_breaker_opened_still_releases_its_lease(
    redis_url: str, redis_prefix: str, breaker: CircuitBreaker
) -> None:
    async with (
        RedisCache.from_url(redis_url, prefix=redis_prefix, breaker=breaker) as leading,
        RedisCache.from_url(redis_url, prefix=redis_prefix) as following,
    ):
        config = FlightConfig(lease=30.0, poll=30.0, follow_timeout=60.0)
        leader = RedisFlight[str](leading.flight_store, config)
        follower = RedisFlight[str](following.flight_store, config)
        upstream = Upstream(leading, "the answer")
        upstream.go.clear()
        led = asyncio.create_task(leader.do(KEY, upstream, Reader(leading)))
        await upstream.started.wait()
        mine = Upstream(following, "the follower's own call")
        reader = Reader(following)
        followed = asyncio.create_task(follower.do(KEY, mine, reader))
        await reader.reads[1].wait()
        for _ in range(breaker.failure_threshold):  # an outage, as the leader saw it
            breaker.record_failure()
        assert state(leading) == "open"
        upstream.go.set()
        assert await led == ("the answer", True)
        assert await followed == ("the answer", False)  # woken by the release's notice
    assert mine.calls == 0 and follower.takeovers == 0


async def test_release_failures_are_logged_once_per_outage(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    patient = CircuitBreaker(failure_threshold=1_000)  # every release is attempted
    async with (
        RedisProxy.for_url(redis_url) as proxy,
        RedisCache.from_url(proxy.url, prefix=redis_prefix, breaker=patient) as cache,
    ):
        flight = RedisFlight[str](cache.flight_store, FlightConfig(lease=30.0))

        async def lead_then_lose_redis() -> tuple[str, bytes | None, float]:
            proxy.stall()  # the release that follows cannot get through
            return "answer", b"answer", 60.0

        async def lead() -> tuple[str, bytes | None, float]:
            return "answer", b"answer", 60.0

        async def nothing() -> str | None:
            return None

        def logged() -> int:
            return sum("could not release flights" in r.getMessage() for r in caplog.records)

        try:
            for i in range(4):  # one outage, four flights
                assert await flight.do(f"{KEY}-{i}", lead_then_lose_redis, nothing) == (
                    "answer",
                    True,
                )
                proxy.resume()
            assert logged() == 1
            assert await flight.do(f"{KEY}-ok", lead, nothing) == ("answer", True)  # over
            assert await flight.do(f"{KEY}-5", lead_then_lose_redis, nothing) == ("answer", True)
            proxy.resume()
            assert logged() == 2  # a new outage, a new line
        finally:
            await flight.aclose()  # stops sending those releases again, before Redis goes


async def test_a_lead_that_raises_a_cache_fault_is_not_run_again(
    redis_url: str, redis_prefix: str, raw: redis.asyncio.Redis
) -> None:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        flight = RedisFlight[str](cache.flight_store, SLOW)
        calls = 0

        async def lead() -> tuple[str, bytes | None, float]:
            nonlocal calls
            calls += 1  # the upstream call ran; then the store inside the lead failed
            raise CacheUnavailableError("the shared tier went away mid-lead")

        with pytest.raises(CacheUnavailableError):
            await flight.do(KEY, lead, Reader(cache))
        assert calls == 1  # not called again as if the lease had failed
        assert await raw.exists(cache.lock_key(KEY)) == 0  # and the lease was released


async def test_a_follower_rides_out_a_stall_of_the_store_without_going_upstream(
    redis_url: str, redis_prefix: str
) -> None:
    """A look the store fails while a follower waits (a stall of a moment: a failover, a
    slow disk) is no news: the follower keeps following the leader's healthy lease. It
    used to go upstream at once, without a lease, paying again for what the leader was
    about to store, and with it every follower process of the key."""
    config = FlightConfig(lease=30.0, poll=0.05, follow_timeout=60.0)
    async with following_through_a_proxy(redis_url, redis_prefix, config) as (proxy, flight):
        proxy.stall()
        # Two looks failed (each past its timeout) when a third begins.
        looked = asyncio.ensure_future(flight.reader.reads[3].wait())
        await asyncio.wait({looked, flight.followed}, return_when=asyncio.FIRST_COMPLETED)
        assert not flight.followed.done() and flight.mine.calls == 0
        proxy.resume()
        flight.upstream.go.set()
        assert await flight.led == ("the leader's answer", True)
        assert await flight.followed == ("the leader's answer", False)
    assert flight.mine.calls == 0 and flight.upstream.calls == 1


async def test_a_follower_leads_at_once_when_the_store_refuses_its_connections() -> None:
    """A store that refuses the connection (killed, restarting) is down, not stalled: the
    follower calls upstream itself at once, rather than riding it out (which would keep
    its caller waiting, or fail it at its deadline, for nothing)."""
    server = RedisServer().start()
    config = FlightConfig(lease=60.0, poll=0.05, follow_timeout=120.0)
    try:
        async with (
            RedisCache.from_url(server.url, prefix="killed:") as leading,
            RedisCache.from_url(server.url, prefix="killed:") as other,
        ):
            flight = await following(leading, other, config)
            server.kill()
            async with asyncio.timeout(LONG):  # a failure, not a hang: a lease is 60 s
                assert await flight.followed == ("the follower's own call", True)
            flight.upstream.go.set()
            assert await flight.led == ("the leader's answer", True)
    finally:
        server.stop()


async def test_a_follower_rides_out_a_stall_for_a_few_seconds_not_a_lease(
    redis_url: str, redis_prefix: str
) -> None:
    """A store that stays silent is given up on after ``RIDE_OUT``, not a whole lease."""
    config = FlightConfig(lease=60.0, poll=0.05, follow_timeout=120.0)
    async with following_through_a_proxy(redis_url, redis_prefix, config) as (proxy, flight):
        proxy.stall()
        async with asyncio.timeout(LONG):  # a failure, not a hang: a lease is 60 s
            assert await flight.followed == ("the follower's own call", True)
        flight.upstream.go.set()
        assert await flight.led == ("the leader's answer", True)
        proxy.resume()

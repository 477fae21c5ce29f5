"""A ``complete()`` caller stopped (cancelled, its ``timeout=`` passed, or ``aclose()``)
at the points it can be suspended, on a Client whose cache has a Redis tier: what is left
behind (leases, tasks, logs) and what the other callers get; and a ``stream()`` reader
stopped where its flight releases the lease.

Counts at the FakeGateway and in Redis, never times; a ``RedisProxy`` holds Redis's
replies so that a caller is known to be waiting on one when it is stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
import redis.asyncio

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    FlightConfig,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
)
from limpet.cache.redis.leases import RedisFlightStore
from limpet.errors import APITimeoutError, ClientClosedError
from limpet.http.chunks import StreamChunk
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.test_lifecycle import limpet_tasks
from tests.redis_servers import RedisProxy, eventually

pytestmark = pytest.mark.redis

# Budgets and leases far longer than any test runs: only what a test does ends a wait.
LONG = 30.0
FLIGHT = FlightConfig(lease=LONG, poll=0.05, follow_timeout=LONG)
# A per-call timeout that passes while a reply is held (held until the test resumes it):
# long enough for the call's own steps before it (a Redis read and a lease through the
# proxy) on a loaded machine; at 0.2 s a full run here saw it pass before the test had
# looked at the lease.
SHORT = 1.0

Stop = Literal["cancel", "timeout", "aclose"]
STOPS: tuple[Stop, ...] = ("cancel", "timeout", "aclose")
STOPPED_WITH: dict[Stop, type[BaseException]] = {
    "cancel": asyncio.CancelledError,
    "timeout": APITimeoutError,
    "aclose": ClientClosedError,
}


def redis_cache(url: str, prefix: str, **options: Any) -> RedisCache:
    options.setdefault("read_timeout", LONG)
    options.setdefault("write_timeout", LONG)
    return RedisCache.from_url(url, prefix=prefix, **options)


def make_client(gateway: FakeGateway, rc: RedisCache, **options: Any) -> Client:
    options.setdefault("flight", FLIGHT)
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(MemoryCache(), rc),
        retry=RetryConfig(max_attempts=1),
        close_grace=0,
        **options,
    )


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        yield client


async def leases(raw: redis.asyncio.Redis, rc: RedisCache) -> list[bytes]:
    return [key async for key in raw.scan_iter(match=rc.lock_key("*"))]


def unretrieved(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "never retrieved" in r.getMessage() or "Task was destroyed" in r.getMessage()
    ]


async def warm(client: Client, rc: RedisCache) -> str:
    """Read the generations keys are made of and open the connections a call uses (the
    lone read's and a pooled one), so that ``stall_replies()`` holds the replies on
    them; returns the key of ``ask()``."""
    key = await client.forget(**ask())
    await rc.get("warm")
    return key


def start(client: Client, stop: Stop) -> asyncio.Task[Any]:
    timeout = SHORT if stop == "timeout" else None
    return asyncio.create_task(client.complete(**ask(), timeout=timeout))


async def stopped(client: Client, call: asyncio.Task[Any], stop: Stop) -> asyncio.Task[None]:
    """Stop ``call`` as ``stop`` says (a ``timeout`` passes by itself) and check how it
    ended; returns the Client's closing (done unless ``stop`` is ``aclose``), for the
    test to await once whatever it waits on can go on."""
    if stop == "cancel":
        call.cancel()
    closing = asyncio.create_task(client.aclose() if stop == "aclose" else asyncio.sleep(0))
    await asyncio.wait({call})
    if stop == "cancel":
        assert call.cancelled()
    else:
        assert isinstance(call.exception(), STOPPED_WITH[stop])
    return closing


# -- the shared-tier read before the flight ----------------------------------------------


async def test_a_caller_cancelled_reading_redis_leaves_its_identical_caller_the_answer(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ep = gateway.endpoint("a")
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = redis_cache(proxy.url, redis_prefix)
        client = make_client(gateway, rc)
        await warm(client, rc)
        proxy.stall_replies()
        first = start(client, "cancel")
        await proxy.reply_held.wait()  # its GET ran in Redis; the reply is held
        # The same request meanwhile goes to the flight, whose read joins the first's.
        second = asyncio.create_task(client.complete(**ask()))

        async def joined() -> bool:
            return bool(rc._reads._joined)

        await eventually(joined, what="the second caller's read joining the first's")
        await stopped(client, first, "cancel")
        proxy.resume()
        async with asyncio.timeout(LONG):  # a failure, not a hang, if it was forgotten
            answer = await second
        assert answer.cache is CacheStatus.MISS
        await client.aclose()
    assert ep.calls == 1
    assert await leases(raw, rc) == []
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []


# -- a cross-process leader and follower -------------------------------------------------


@pytest.mark.parametrize("stop", STOPS)
async def test_a_leader_stopped_before_its_release_reached_redis_still_releases(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    stop: Stop,
) -> None:
    # The upstream answer is in, and the write-behind holds the one pooled connection
    # (its reply held): the leader's release waits for that connection when its last
    # caller goes. A release cut short there would leave a 30 s lease and no notice.
    ep = gateway.endpoint("a")
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = redis_cache(proxy.url, redis_prefix, max_connections=2)  # the lone read's + 1
        client = make_client(gateway, rc)
        key = await warm(client, rc)
        ep.hold_answers()
        call = start(client, stop)
        await ep.wait_for_calls(1)
        assert len(await leases(raw, rc)) == 1
        proxy.stall_replies()
        ep.release_answers()
        await proxy.reply_held.wait()
        # The write-behind went first; the lease is still there: the release waits.
        assert await raw.exists(rc.redis_key(key), rc.lock_key(key)) == 2
        closing = await stopped(client, call, stop)
        proxy.resume()
        await closing
        await client.aclose()
    assert await leases(raw, rc) == []
    assert ep.calls == 1
    async with make_client(gateway, redis_cache(redis_url, redis_prefix)) as other:
        again = await other.complete(**ask())  # the answer landed whole
    assert again.cache is CacheStatus.HIT and again.content
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []


@pytest.mark.parametrize("stop", STOPS)
async def test_a_follower_stopped_taking_a_stale_lease_over_leaves_no_lease(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stop: Stop,
) -> None:
    # Its take-over ran in Redis but the reply never came: the lease may be the
    # follower's, with nobody to renew or release it but the follower itself.
    ep = gateway.endpoint("a")
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = redis_cache(proxy.url, redis_prefix)
        client = make_client(gateway, rc, flight=FlightConfig(lease=0.01, poll=0.01))
        key = await warm(client, rc)
        # A lease nobody renews (a leader gone without a release), outlasting the test.
        await raw.set(rc.lock_key(key), "gone:0", px=int(LONG * 1000))
        take_over = RedisFlightStore.take_over

        async def take_over_unheard(
            self: RedisFlightStore, key: str, seen: str, token: str, lease: float
        ) -> bool:
            proxy.stall_replies()  # the EVAL goes through; its reply is held
            # For a lease that outlasts the test, as a fleet's would (the follower's own
            # is short only so that it takes over at once).
            return await take_over(self, key, seen, token, LONG)

        monkeypatch.setattr(RedisFlightStore, "take_over", take_over_unheard)
        call = start(client, stop)
        await proxy.reply_held.wait()
        assert await raw.get(rc.lock_key(key)) not in (None, b"gone:0")  # taken over
        closing = await stopped(client, call, stop)
        proxy.resume()
        await closing
        await client.aclose()
    assert ep.calls == 0
    assert await leases(raw, rc) == []
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []


@pytest.mark.parametrize("stop", ("cancel", "timeout"))
async def test_a_leading_caller_stopped_leaves_its_flight_to_the_callers_of_both_processes(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    stop: Stop,
) -> None:
    # The caller that started a's flight goes while a's other callers and b (following
    # a's lease) still wait: the flight goes on for them, its notice says the entry is
    # stored, and b reads it rather than taking over.
    ep = gateway.endpoint("a")
    rc = redis_cache(redis_url, redis_prefix)
    async with (
        make_client(gateway, rc) as a,
        make_client(gateway, redis_cache(redis_url, redis_prefix)) as b,
    ):
        await a.forget(**ask())
        ep.hold_answers()
        leading = start(a, stop)
        await ep.wait_for_calls(1)
        others = [asyncio.create_task(a.complete(**ask())) for _ in range(5)]
        following = asyncio.create_task(b.complete(**ask()))
        flight = b._chat.shared_flight
        assert flight is not None

        async def b_follows() -> bool:
            return flight.lease_checks >= 1

        await eventually(b_follows, what="b following a's flight")
        await stopped(a, leading, stop)
        ep.release_answers()
        answers = await asyncio.gather(*others, following)
    assert ep.calls == 1
    # The answer a's leading caller left is the first of a's others' own, with what it
    # cost; the rest of a's callers and b's shared it.
    assert [answer.cache for answer in answers] == [CacheStatus.MISS] + [CacheStatus.COALESCED] * 5
    assert answers[0].cost is not None and answers[0].cost.usd > 0
    assert a.stats.cost_usd == answers[0].cost.usd and a.stats.misses == 1
    assert len({answer.content for answer in answers}) == 1
    assert flight.takeovers == 0
    assert await leases(raw, rc) == []
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []


@pytest.mark.parametrize("stop", ("close", "cancel", "aclose"))
async def test_a_stream_stopped_after_its_last_chunk_still_releases_its_lease(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    stop: Literal["close", "cancel", "aclose"],
) -> None:
    # A stream's reader has every chunk before its flight releases the lease: the end of
    # the stream waits for that release, held here as in the test above. A reader that
    # stops there (leaving ``async with`` at the last chunk, cancelled, or its Client
    # closed) is the last, so its flight is cancelled mid-release.
    ep = gateway.endpoint("a")
    read: list[StreamChunk] = []
    last, close = asyncio.Event(), asyncio.Event()

    async def reader(client: Client) -> None:
        async with client.stream(**ask()) as stream:
            async for chunk in stream:
                read.append(chunk)
                if chunk.index is None:  # usage: the last chunk, only the end comes next
                    last.set()
                    if stop == "close":
                        await close.wait()
                        break

    async with RedisProxy.for_url(redis_url) as proxy:
        rc = redis_cache(proxy.url, redis_prefix, max_connections=2)  # the lone read's + 1
        client = make_client(gateway, rc)
        key = await warm(client, rc)
        ep.hold_answers()
        reading = asyncio.create_task(reader(client))
        await ep.wait_for_calls(1)
        assert len(await leases(raw, rc)) == 1
        proxy.stall_replies()
        ep.release_answers()
        await proxy.reply_held.wait()
        await last.wait()
        # The write-behind went first; the lease is still there: the release waits.
        assert await raw.exists(rc.redis_key(key), rc.lock_key(key)) == 2
        closing = asyncio.create_task(client.aclose() if stop == "aclose" else asyncio.sleep(0))
        if stop == "close":
            close.set()
        elif stop == "cancel":
            reading.cancel()
        await asyncio.wait({reading})
        if stop == "close":
            assert reading.exception() is None
        elif stop == "cancel":
            assert reading.cancelled()
        else:
            assert isinstance(reading.exception(), ClientClosedError)
        proxy.resume()
        await closing
        await client.aclose()
    assert await leases(raw, rc) == []
    assert ep.calls == 1
    # Stored, though no reader saw the stream end: the flight's lead stores the answer
    # (in memory, and behind to Redis) once upstream has sent it all, before the release.
    async with make_client(gateway, redis_cache(redis_url, redis_prefix)) as other:
        replay = other.stream(**ask())
        replayed = [chunk async for chunk in replay]
    assert replay.completion is not None and replay.completion.cache is CacheStatus.HIT
    assert [chunk.raw for chunk in replayed] == [chunk.raw for chunk in read]
    assert ep.calls == 1
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []


# -- the write behind to Redis -----------------------------------------------------------


async def test_aclose_cutting_a_write_behind_short_counts_it_and_leaves_the_entry_whole(
    gateway: FakeGateway,
    redis_url: str,
    redis_prefix: str,
    raw: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The answer is written twice: behind (the write queue) and by the flight's release.
    # The write behind's reply is held past close_timeout, so aclose() cuts it short.
    ep = gateway.endpoint("a")
    async with RedisProxy.for_url(redis_url) as proxy:
        rc = redis_cache(proxy.url, redis_prefix, close_timeout=0.05)
        client = make_client(gateway, rc)
        await warm(client, rc)
        ep.hold_answers()
        call = asyncio.create_task(client.complete(**ask()))
        await ep.wait_for_calls(1)
        proxy.stall_replies()  # on the connections open now; the release takes a new one
        ep.release_answers()
        assert (await call).cache is CacheStatus.MISS
        await proxy.reply_held.wait()
        assert rc.pending_writes == 1
        await client.aclose()
        proxy.resume()
    assert "1 writes to redis" in caplog.text and "dropped on close" in caplog.text
    assert rc.pending_writes == 0
    assert rc.dropped_writes + rc.failed_writes == 1  # the log's count, in the counters
    assert await leases(raw, rc) == []
    async with make_client(gateway, redis_cache(redis_url, redis_prefix)) as other:
        again = await other.complete(**ask())
    assert again.cache is CacheStatus.HIT and again.content
    assert ep.calls == 1
    assert limpet_tasks() == []
    assert unretrieved(caplog) == []

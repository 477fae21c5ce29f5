"""Single-flight across processes on a real Redis: counts at the FakeGateway, never times.

Two Clients in one process share nothing but Redis (each has its own SingleFlight), so
they exercise the cross-process protocol cheaply; the storm and SIGKILL tests use real
OS processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import pytest

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
from limpet.errors import BadRequestError
from limpet.testing import FakeGateway
from limpet.testing.storm import run_storm, start_workers
from tests.integration.chat import ask
from tests.redis_servers import eventually, free_port

pytestmark = [pytest.mark.redis, pytest.mark.gateway(latency=0.3)]

FAST = FlightConfig(lease=0.3, poll=0.05)


def make_client(
    gateway: FakeGateway,
    redis_url: str,
    prefix: str,
    flight: FlightConfig = FAST,
    hmac_key: bytes | None = None,
    **kwargs: Any,
) -> Client:
    cache = TieredCache(
        MemoryCache(),
        RedisCache.from_url(redis_url, prefix=prefix, hmac_key=hmac_key),
        hmac_key=hmac_key,
    )
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=cache,
        flight=flight,
        retry=RetryConfig(max_attempts=1),
        **kwargs,
    )


async def test_two_clients_sharing_redis_make_one_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        make_client(gateway, redis_url, redis_prefix) as a,
        make_client(gateway, redis_url, redis_prefix) as b,
    ):
        results = await asyncio.gather(
            *(client.complete(**ask()) for client in (a, b) for _ in range(20))
        )
    assert gateway.endpoint("a").calls == 1
    assert len({r.content for r in results}) == 1
    statuses = [r.cache for r in results]
    assert statuses.count(CacheStatus.MISS) == 1
    assert statuses.count(CacheStatus.COALESCED) == 39


@pytest.mark.parametrize("max_connections", [1, 2])
async def test_following_a_flight_leaves_a_small_pool_every_connection_it_had(
    gateway: FakeGateway, redis_url: str, redis_prefix: str, max_connections: int
) -> None:
    """Following a flight subscribes to its notices for good: on a connection of the
    cache's own pool, it left a pool of one none (two: none beside the one kept for
    lone reads), and every later read and write waited twenty budgets and failed."""
    small = RedisCache.from_url(redis_url, prefix=redis_prefix, max_connections=max_connections)
    follower = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))], cache=TieredCache(small), flight=FAST
    )
    endpoint = gateway.endpoint("a")
    async with make_client(gateway, redis_url, redis_prefix) as leader, follower:
        endpoint.hold_answers()
        led = asyncio.create_task(leader.complete(**ask("followed")))
        await endpoint.wait_for_calls(1)
        followed = asyncio.create_task(follower.complete(**ask("followed")))

        async def watching() -> bool:
            return bool(small.flight_store._watches)

        await eventually(watching, what="the follower watches the leader's flight")
        endpoint.release_answers()
        assert (await followed).cache is CacheStatus.COALESCED
        await led
        assert (await follower.complete(**ask("after"))).cache is CacheStatus.MISS
        await small.flush()
        assert small.failed_writes == 0
        assert (await follower.complete(**ask("after"))).cache is CacheStatus.HIT
    assert endpoint.calls == 2


async def test_a_call_lasting_three_leases_is_still_one_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    gateway.endpoint("a").latency = 1.0  # more than three 0.3 s leases: renewal must hold
    async with (
        make_client(gateway, redis_url, redis_prefix) as a,
        make_client(gateway, redis_url, redis_prefix) as b,
    ):
        results = await asyncio.gather(a.complete(**ask()), b.complete(**ask()))
    assert gateway.endpoint("a").calls == 1
    assert sorted(r.cache.value for r in results) == ["coalesced", "miss"]


async def test_a_signed_final_error_reaches_the_other_process_and_is_not_cached(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    ep.fail(400, times=2, message="schema rejected")
    async with (
        make_client(gateway, redis_url, redis_prefix, hmac_key=b"fleet secret") as a,
        make_client(gateway, redis_url, redis_prefix, hmac_key=b"fleet secret") as b,
    ):
        # a's request is held upstream until b follows it: the error must reach b as a
        # notice (b arriving after a's flight ended would lead a flight of its own).
        ep.hold_answers()
        leading = asyncio.create_task(a.complete(**ask()))
        await ep.wait_for_calls(1)
        following = asyncio.create_task(b.complete(**ask()))
        flight = b._chat.shared_flight
        assert flight is not None

        async def b_follows() -> bool:
            return flight.lease_checks >= 1

        await eventually(b_follows, what="b following a's flight")
        ep.release_answers()
        results = await asyncio.gather(leading, following, return_exceptions=True)
        assert all(isinstance(r, BadRequestError) for r in results), results
        assert all("schema rejected" in str(r) for r in results)
        assert gateway.endpoint("a").calls == 1
        with pytest.raises(BadRequestError):  # not cached: the next call goes upstream
            await b.complete(**ask())
    assert gateway.endpoint("a").calls == 2


async def test_an_unsigned_final_error_is_a_hint_each_process_calls_once_in_turn(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Without hmac_key anyone able to PUBLISH could forge the notice, so the follower
    # never raises it: it takes the lease over and asks upstream itself, once.
    gateway.endpoint("a").fail(400, times=2, message="schema rejected")
    async with (
        make_client(gateway, redis_url, redis_prefix) as a,
        make_client(gateway, redis_url, redis_prefix) as b,
    ):
        results = await asyncio.gather(
            a.complete(**ask()), b.complete(**ask()), return_exceptions=True
        )
        flights = [client._chat.shared_flight for client in (a, b)]
    assert all(isinstance(r, BadRequestError) for r in results), results
    assert gateway.endpoint("a").calls == 2  # one per process, never concurrent
    assert sum(f.takeovers for f in flights if f is not None) == 1


async def test_a_leader_that_walks_away_hands_over_to_a_follower(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    async with (
        make_client(gateway, redis_url, redis_prefix) as a,
        make_client(gateway, redis_url, redis_prefix) as b,
    ):
        leader = asyncio.create_task(a.complete(**ask()))
        await gateway.endpoint("a").wait_for_calls(1)
        follower = asyncio.create_task(b.complete(**ask()))
        leader.cancel()  # its only caller is gone, so the flight is abandoned
        with pytest.raises(asyncio.CancelledError):
            await leader
        result = await follower
    assert result.cache is CacheStatus.COALESCED or result.cache is CacheStatus.MISS
    assert result.content
    assert gateway.endpoint("a").calls == 2


async def test_an_answer_too_large_to_share_sends_every_follower_upstream_at_once(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Nothing stored, nothing to follow: waiting on, the followers led one after another,
    # each for as long as the call before it took.
    def oversized(_: int) -> Client:
        cache = TieredCache(
            MemoryCache(), RedisCache.from_url(redis_url, prefix=redis_prefix), max_entry_bytes=64
        )
        endpoint = Endpoint("a", gateway.base_url("a"))
        return Client(endpoints=[endpoint], cache=cache, flight=FAST)

    ep = gateway.endpoint("a")
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(oversized(i)) for i in range(4)]
        flights = [client._chat.shared_flight for client in clients]
        ep.hold_answers()  # the leader's answer waits until the three follow it
        leader = asyncio.create_task(clients[0].complete(**ask()))
        await ep.wait_for_calls(1)
        followers = [asyncio.create_task(client.complete(**ask())) for client in clients[1:]]

        async def all_follow() -> bool:
            return all(f is not None and f.lease_checks >= 1 for f in flights[1:])

        await eventually(all_follow, what="three clients following the leader")
        ep.release_answers()
        results = [await leader, *await asyncio.gather(*followers)]
    assert [r.cache for r in results] == [CacheStatus.MISS] * 4
    assert ep.calls == 4
    assert ep.max_in_flight == 3  # the three followers, together
    assert sum(f.takeovers for f in flights if f is not None) == 0


async def test_a_stream_cut_short_is_taken_over_by_one_follower_not_called_by_all(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Its leader's stream ended early: nothing stored this time, but the next stream is
    # whole. Regression: told UNSHARED, every follower streamed upstream at once.
    ep = gateway.endpoint("a")
    ep.end_stream_early(after_chunks=2, times=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(make_client(gateway, redis_url, redis_prefix))
            for _ in range(4)
        ]
        flights = [client._pipelines.stream_flights._shared for client in clients]

        async def read(client: Client) -> str:
            return "".join([chunk.content or "" async for chunk in client.stream(**ask())])

        ep.hold_answers()
        leader = asyncio.create_task(read(clients[0]))
        await ep.wait_for_calls(1)
        followers = [asyncio.create_task(read(client)) for client in clients[1:]]

        async def all_follow() -> bool:
            return all(f is not None and f.lease_checks >= 1 for f in flights[1:])

        await eventually(all_follow, what="three clients following the leader")
        ep.release_answers()
        cut, *whole = [await leader, *await asyncio.gather(*followers)]
    assert ep.calls == 2  # the leader's, and the one follower's that took over
    assert len(set(whole)) == 1 and cut != whole[0]


async def test_with_redis_down_each_process_makes_its_own_call(gateway: FakeGateway) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with (
        make_client(gateway, dead, "limpet-dead:") as a,
        make_client(gateway, dead, "limpet-dead:") as b,
    ):
        results = await asyncio.gather(
            *(client.complete(**ask()) for client in (a, b) for _ in range(10))
        )
    assert gateway.endpoint("a").calls == 2
    assert len({r.content for r in results}) == 1


async def test_sampled_requests_are_never_coalesced(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    gateway.endpoint("a").latency = 0.05
    async with make_client(gateway, redis_url, redis_prefix) as a:
        await asyncio.gather(*(a.complete(**{**ask(), "temperature": 0.8}) for _ in range(5)))
    assert gateway.endpoint("a").calls == 5


async def test_four_processes_of_a_hundred_callers_make_one_call(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    reports = await run_storm(
        4,
        base_url=gateway.base_url("a"),
        redis_url=redis_url,
        callers=100,
        prefix=redis_prefix,
        lease=FAST.lease,
        poll=FAST.poll,
    )
    assert gateway.endpoint("a").calls == 1
    assert [r.errors for r in reports] == [[], [], [], []]
    assert sum(sum(r.statuses.values()) for r in reports) == 400
    assert sum(r.statuses.get("miss", 0) for r in reports) == 1


async def test_a_sigkilled_leader_process_is_replaced_by_a_follower(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.0
    ep.delay(60.0)  # the first call hangs until its process dies
    workers = await start_workers(
        3,
        base_url=gateway.base_url("a"),
        redis_url=redis_url,
        callers=20,
        prefix=redis_prefix,
        lease=0.5,
        poll=0.05,
    )
    for worker in workers:
        worker.release()
    await ep.wait_for_calls(1)
    assert ep.last_headers is not None
    leader_name = ep.last_headers["X-Title"]
    leader = next(w for w in workers if w.name == leader_name)
    leader.process.send_signal(signal.SIGKILL)
    await leader.process.wait()
    survivors = [w for w in workers if w is not leader]
    reports = await asyncio.gather(*(w.report() for w in survivors))
    assert [r.errors for r in reports] == [[], []]
    assert [sum(r.statuses.values()) for r in reports] == [20, 20]
    assert ep.calls == 2
    assert sum(r.takeovers for r in reports) == 1
    # The wait is bounded by the dead lease (0.5 s, checked every 0.05 s), not by
    # follow_timeout (600 s: 12,000 checks): tens of checks, live leader's time included.
    assert max(r.lease_checks for r in reports) <= 100


async def test_a_follower_with_a_shorter_lease_never_takes_a_live_leaders_over(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # A rolling change of FlightConfig.lease: the leader renews every third of its own
    # 30 s lease; a follower of 0.3 s must judge that lease by 30 s, not by its own.
    ep = gateway.endpoint("a")
    slow = FlightConfig(lease=30.0, poll=0.05)
    async with (
        make_client(gateway, redis_url, redis_prefix, flight=slow) as leader,
        make_client(gateway, redis_url, redis_prefix, flight=FAST) as follower,
    ):
        ep.hold_answers()
        leading = asyncio.create_task(leader.complete(**ask()))
        await ep.wait_for_calls(1)
        following = asyncio.create_task(follower.complete(**ask()))
        flight = follower._chat.shared_flight
        assert flight is not None

        async def followed_past_its_own_lease() -> bool:
            # 20 looks at least 0.05 s apart: past 0.3 s, its own lease, several times.
            return flight.lease_checks >= 20 or flight.takeovers > 0

        await eventually(followed_past_its_own_lease, what="the follower following")
        assert ep.calls == 1 and flight.takeovers == 0
        ep.release_answers()
        led, followed = await asyncio.gather(leading, following)
    assert (led.cache, followed.cache) == (CacheStatus.MISS, CacheStatus.COALESCED)
    assert ep.calls == 1

"""``aclose()`` with calls in flight, and the OpenAI SDK's per-call ``timeout=``: against
the FakeGateway over loopback. Counts (upstream calls, outcomes), never times."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

import limpet
from limpet import CacheStatus, Client, Endpoint, MemoryCache, RedisCache, RetryConfig, TieredCache
from limpet.errors import (
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    InternalServerError,
    LimpetError,
)
from limpet.testing import FakeGateway
from tests.integration.chat import ask

FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)
# Far longer than any test runs: a delayed answer that comes only if nothing stops the wait.
FOREVER = 600.0
_LIMPET_SOURCES = Path(limpet.__file__).parent
_GATEWAY_SOURCES = _LIMPET_SOURCES / "testing"


def limpet_tasks() -> list[asyncio.Task[Any]]:
    """Running tasks whose coroutine is limpet's own (not the FakeGateway's, not a test's)."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        where = Path(code.co_filename) if code is not None else None
        if (
            where is not None
            and where.is_relative_to(_LIMPET_SOURCES)
            and not where.is_relative_to(_GATEWAY_SOURCES)
            and not task.done()
        ):
            found.append(task)
    return found


def make_client(gateway: FakeGateway, **options: Any) -> Client:
    options.setdefault("retry", FAST_RETRY)
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], **options)


# -- aclose() ----------------------------------------------------------------------------


async def test_aclose_lets_100_calls_in_flight_finish_then_nothing_runs(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    client = make_client(gateway, close_grace=FOREVER)
    calls = [asyncio.create_task(client.complete(**ask(f"question {i}"))) for i in range(100)]
    await ep.wait_for_calls(100)
    await client.aclose()
    assert all(call.done() for call in calls)
    completions = [call.result() for call in calls]
    assert {c.cache for c in completions} == {CacheStatus.MISS}
    assert ep.calls == 100
    assert limpet_tasks() == []
    assert client._transport._session is None  # none was opened again after closing


async def test_aclose_stops_calls_still_running_after_the_grace_period(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.delay(FOREVER, times=100)
    # All 100 on the wire at once: no admission limit holds any back.
    client = make_client(gateway, close_grace=0.05, admission=False)
    calls = [asyncio.create_task(client.complete(**ask(f"question {i}"))) for i in range(100)]
    await ep.wait_for_calls(100)
    await client.aclose()
    assert all(call.done() for call in calls)
    for call in calls:
        assert isinstance(call.exception(), ClientClosedError)
    assert ep.calls == 100
    assert client.stats.upstream_calls == 100
    assert limpet_tasks() == []
    assert client._transport._session is None


async def test_aclose_stops_coalesced_waiters_and_their_shared_call(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    ep.delay(FOREVER)
    client = make_client(gateway, close_grace=0)
    calls = [asyncio.create_task(client.complete(**ask())) for _ in range(50)]
    await ep.wait_for_calls(1)
    await client.aclose()
    assert {type(call.exception()) for call in calls} == {ClientClosedError}
    assert ep.calls == 1
    assert limpet_tasks() == []


async def test_a_call_its_caller_cancels_is_cancelled_and_the_client_goes_on(
    gateway: FakeGateway,
) -> None:
    # A call with no deadline is stopped by cancelling its task: a cancellation of the
    # caller's own must stay a cancellation (never ClientClosedError), and the Client must
    # count the call as ended.
    ep = gateway.endpoint("a")
    ep.delay(FOREVER, times=1)
    client = make_client(gateway)
    call = asyncio.create_task(client.complete(**ask("cancelled")))
    await ep.wait_for_calls(1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert len(client._calls) == 0
    answered = await client.complete(**ask("after"))
    assert answered.cache is CacheStatus.MISS
    await client.aclose()
    assert limpet_tasks() == []


async def test_aclose_stops_a_call_whose_caller_has_cancelled_it_before(
    gateway: FakeGateway,
) -> None:
    # A caller that cancelled and then caught its cancellation (its task counts it) is
    # still stopped as closed when aclose() comes.
    ep = gateway.endpoint("a")
    ep.delay(FOREVER)
    client = make_client(gateway, close_grace=0)

    async def shielded_once() -> object:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            task.uncancel()
        return await client.complete(**ask("late"))

    call = asyncio.create_task(shielded_once())
    await ep.wait_for_calls(1)
    await client.aclose()
    assert isinstance(call.exception(), ClientClosedError)


@pytest.mark.redis
async def test_aclose_releases_the_cross_process_lease_of_a_stopped_leader(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    ep.delay(FOREVER)
    rc = RedisCache.from_url(redis_url, prefix=redis_prefix)
    client = make_client(gateway, cache=TieredCache(MemoryCache(), rc), close_grace=0)
    call = asyncio.create_task(client.complete(**ask()))
    await ep.wait_for_calls(1)
    async with redis.asyncio.Redis.from_url(redis_url) as r:
        assert [key async for key in r.scan_iter(match=rc.lock_key("*"))] != []
        await client.aclose()
        assert isinstance(call.exception(), ClientClosedError)
        assert [key async for key in r.scan_iter(match=rc.lock_key("*"))] == []
    assert limpet_tasks() == []


async def test_aclose_stops_a_stream_being_read_and_one_held_open(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=2)
    client = make_client(gateway, close_grace=0)
    held = client.stream(**ask("held"))
    await anext(held)

    async def read_all() -> list[object]:
        return [chunk async for chunk in client.stream(**ask("read"))]

    reading = asyncio.create_task(read_all())
    await ep.wait_for_calls(2)
    await client.aclose()
    assert isinstance(reading.exception(), ClientClosedError)
    with pytest.raises(ClientClosedError):
        async for _ in held:
            pass
    assert limpet_tasks() == []
    assert ep.calls == 2


async def test_a_call_after_aclose_raises_client_closed_error(gateway: FakeGateway) -> None:
    client = make_client(gateway)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.complete(**ask())
    with pytest.raises(ClientClosedError):
        client.stream(**ask())
    with pytest.raises(ClientClosedError):
        await client.warm([ask()])
    # Regression: these returned as if done, with the cache closed and nothing changed.
    with pytest.raises(ClientClosedError):
        await client.invalidate()
    with pytest.raises(ClientClosedError):
        await client.forget(**ask())
    assert issubclass(ClientClosedError, LimpetError)
    assert gateway.total_calls == 0


async def test_a_stream_opened_before_aclose_and_first_read_after_raises(
    gateway: FakeGateway,
) -> None:
    client = make_client(gateway)
    stream = client.stream(**ask())
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await anext(stream)
    assert gateway.total_calls == 0


async def test_concurrent_aclose_calls_all_return_once_closed(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    client = make_client(gateway)
    call = asyncio.create_task(client.complete(**ask()))
    await ep.wait_for_calls(1)
    await asyncio.gather(client.aclose(), client.aclose())
    assert call.done() and call.result().cache is CacheStatus.MISS
    await client.aclose()  # idempotent
    assert limpet_tasks() == []


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "5", True, None])
def test_close_grace_is_validated(grace: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^Client\.close_grace"):
        Client(base_url="http://127.0.0.1:9/v1", close_grace=grace)  # type: ignore[arg-type]


# -- timeout= ----------------------------------------------------------------------------


async def test_timeout_bounds_a_call_whose_answer_never_comes(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.delay(FOREVER, times=10)
    async with make_client(gateway) as client:
        with pytest.raises(APITimeoutError, match=r"timeout of 0\.3s .* endpoint 'a'"):
            await client.complete(**ask(), timeout=0.3)
    assert ep.calls == 1
    assert client.stats.errors == 1


async def test_timeout_bounds_each_coalesced_waiter_and_the_call_is_not_repeated(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.delay(FOREVER)
    async with make_client(gateway) as client:
        outcomes = await asyncio.gather(
            *(client.complete(**ask(), timeout=0.3) for _ in range(100)),
            return_exceptions=True,
        )
        assert {type(outcome) for outcome in outcomes} == {APITimeoutError}
        assert ep.calls == 1
        # Every waiter left, so the shared call went with them: the next call starts anew.
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_a_waiter_never_waits_for_a_second_retry_cycle_past_its_deadline(
    gateway: FakeGateway,
) -> None:
    # Each attempt times out (per attempt) quickly; the leader's flight fails after two,
    # and the waiters would be promoted to a second flight of two more. Their own
    # deadlines stop them first: at most one attempt of a second flight is ever sent.
    ep = gateway.endpoint("a")
    ep.delay(FOREVER, times=10)
    retry = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)
    async with make_client(gateway, retry=retry, timeouts=limpet.Timeouts(total=0.2)) as client:
        outcomes = await asyncio.gather(
            *(client.complete(**ask(), timeout=0.5) for _ in range(99)),
            return_exceptions=True,
        )
    assert {type(outcome) for outcome in outcomes} == {APITimeoutError}
    assert ep.calls <= 3


async def test_a_backoff_that_would_outlast_the_deadline_is_not_slept(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.fail(503, times=3)
    slow_retry = RetryConfig(max_attempts=3, initial_backoff=FOREVER, max_backoff=FOREVER)
    async with make_client(gateway, retry=slow_retry) as client:
        with pytest.raises(InternalServerError):
            await client.complete(**ask(), timeout=60)
    assert ep.calls == 1


async def test_a_stream_sleeps_no_backoff_that_would_outlast_its_deadline(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    ep.fail(503, times=3)
    slow_retry = RetryConfig(max_attempts=3, initial_backoff=FOREVER, max_backoff=FOREVER)
    async with make_client(gateway, retry=slow_retry) as client:
        with pytest.raises(InternalServerError):
            async for _ in client.stream(**ask(), timeout=60):
                pass
    assert ep.calls == 1


async def test_timeout_bounds_a_stream(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    ep.pause_stream(after_chunks=1)
    async with make_client(gateway) as client:
        stream = client.stream(**ask(), timeout=0.3)
        chunks = []
        with pytest.raises(APITimeoutError, match=r"timeout of 0\.3s"):
            async for chunk in stream:
                chunks.append(chunk)
        ep.resume_stream()
        assert len(chunks) == 1
        assert client.stats.errors == 1
    assert ep.calls == 1


# -- extra_headers= and extra_body= ------------------------------------------------------


async def test_extra_headers_are_sent_and_only_those_that_can_change_the_answer_keyed(
    gateway: FakeGateway,
) -> None:
    ep = gateway.endpoint("a")
    async with make_client(gateway) as client:
        first = await client.complete(**ask(), extra_headers={"X-Request-Id": "one"})
        assert ep.last_headers is not None and ep.last_headers["X-Request-Id"] == "one"
        assert ep.last_request is not None and "extra_headers" not in ep.last_request
        again = await client.complete(**ask(), extra_headers={"X-Request-Id": "two"})
        assert again.cache is CacheStatus.HIT and again.key == first.key
        chunks = [c async for c in client.stream(**ask("s"), extra_headers={"X-Trace": "s"})]
        assert chunks
        assert ep.last_headers["X-Trace"] == "s"
        # Not known to be transport-only, so keyed: the same request is sent again.
        other = await client.complete(**ask(), extra_headers={"X-Trace": "one"})
        assert other.cache is CacheStatus.MISS and other.key != first.key
    assert ep.calls == 3


async def test_a_calls_own_headers_never_outlive_it(gateway: FakeGateway) -> None:
    """The endpoint's request headers are built once and kept; a call's own headers are
    sent with that call only, before and after calls without any."""
    ep = gateway.endpoint("a")
    async with make_client(gateway) as client:
        await client.complete(**ask("plain"))
        assert ep.last_headers is not None and "X-Trace" not in ep.last_headers
        await client.complete(**ask("traced"), extra_headers={"X-Trace": "one"})
        assert ep.last_headers["X-Trace"] == "one"
        await client.complete(**ask("plain again"))
        assert "X-Trace" not in ep.last_headers
    assert ep.calls == 3


async def test_extra_body_is_merged_into_the_body_and_the_key(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    async with make_client(gateway) as client:
        a = await client.complete(**ask(), extra_body={"provider": {"order": ["x"]}})
        assert ep.last_request is not None
        assert ep.last_request["provider"] == {"order": ["x"]}
        assert "extra_body" not in ep.last_request
        b = await client.complete(**ask(), extra_body={"provider": {"order": ["y"]}})
        assert (a.cache, b.cache) == (CacheStatus.MISS, CacheStatus.MISS)
        assert a.key != b.key
        # The same body however it was spelt: one key.
        same = await client.complete(**ask(provider={"order": ["x"]}))
        assert same.cache is CacheStatus.HIT and same.key == a.key
        # extra_body wins over a field given directly, as in the OpenAI SDK.
        await client.complete(**ask(seed=1), extra_body={"seed": 2})
        assert ep.last_request["seed"] == 2
    assert ep.calls == 3


async def test_extra_body_applies_to_streams(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    async with make_client(gateway) as client:
        _ = [c async for c in client.stream(**ask(), extra_body={"seed": 7})]
        assert ep.last_request is not None and ep.last_request["seed"] == 7
        replayed = client.stream(**ask(), extra_body={"seed": 7})
        _ = [c async for c in replayed]
        assert replayed.completion is not None
        assert replayed.completion.cache is CacheStatus.HIT
    assert ep.calls == 1


# -- max_entry_bytes ---------------------------------------------------------------------


async def test_an_answer_above_max_entry_bytes_is_served_not_stored(gateway: FakeGateway) -> None:
    ep = gateway.endpoint("a")
    cache = TieredCache(MemoryCache(), max_entry_bytes=256)
    async with make_client(gateway, cache=cache) as client:
        outcomes = [await client.complete(**ask()) for _ in range(2)]
        assert [c.cache for c in outcomes] == [CacheStatus.MISS, CacheStatus.MISS]
        assert outcomes[0].content
        assert client.stats.oversized == 2
        assert client.stats.as_dict()["cache_oversized"] == 2
    assert ep.calls == 2


async def test_answers_within_max_entry_bytes_are_stored(gateway: FakeGateway) -> None:
    async with make_client(gateway) as client:
        outcomes = [await client.complete(**ask()) for _ in itertools.repeat(None, 2)]
        assert [c.cache for c in outcomes] == [CacheStatus.MISS, CacheStatus.HIT]
        assert client.stats.oversized == 0

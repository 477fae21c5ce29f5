"""Upstream admission against the FakeGateway over loopback: caps, the learned limit, the
shared pause, deadlines, cancellation. Counts (429s at the gateway, failures), never times."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from limpet import (
    AdmissionConfig,
    CacheStatus,
    Client,
    Endpoint,
    PriceTable,
    RetryConfig,
    Timeouts,
)
from limpet.errors import APIError, APITimeoutError, RateLimitError
from limpet.http.admission import Admission
from limpet.observe.metrics import PrometheusMetrics
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.loopback import served

FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)
FOREVER = 600.0

#: A model the upstream lists with prices, and its answer without ``usage.cost``: the
#: Client prices it from the listing.
LISTED_MODEL = "test/listed"
LISTED = {"id": LISTED_MODEL, "pricing": {"prompt": "0.000001", "completion": "0.000002"}}
UNPRICED_ANSWER = {
    "id": "gen-1",
    "object": "chat.completion",
    "created": 1,
    "model": LISTED_MODEL,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}

pytestmark = pytest.mark.gateway(latency=0.02)


def make_client(gateway: FakeGateway, **options: Any) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"), max_in_flight=options.pop("cap", None))
    options.setdefault("retry", FAST_RETRY)
    return Client(endpoints=[endpoint], **options)


async def failures_of(client: Client, count: int) -> list[BaseException]:
    async def one(index: int) -> BaseException | None:
        try:
            await client.complete(**ask(f"question {index}"))
        except APIError as exc:
            return exc
        return None

    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    return [exc for exc in outcomes if exc is not None]


async def until(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds (a state, not a time)."""
    while not condition():  # noqa: ASYNC110 (the state has no event to wait on)
        await asyncio.sleep(0)


async def test_300_calls_against_20_in_flight_learn_the_limit_without_failing(
    gateway: FakeGateway,
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.limit(in_flight=20)
    # No price listing: its fetch, started by the first answer, counts in flight too.
    async with make_client(gateway, cache=None, prices=PriceTable(None)) as client:
        assert await failures_of(client, 300) == []
        figures = client.stats.endpoints["a"]
    assert endpoint.completions == 300
    assert endpoint.rate_limited <= 400
    assert figures.rate_limited == endpoint.rate_limited
    assert figures.in_flight == 0
    assert figures.queued == 0


async def test_with_admission_off_the_same_storm_fails_calls(gateway: FakeGateway) -> None:
    # The baseline the issue measured: every caller retries on its own and runs out.
    endpoint = gateway.endpoint("a")
    endpoint.limit(in_flight=20)
    async with make_client(gateway, cache=None, admission=False) as client:
        failed = await failures_of(client, 300)
    assert failed
    assert endpoint.rate_limited > 400


async def test_a_cap_of_20_sends_no_more_than_20_and_meets_no_429(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.limit(in_flight=20)
    async with make_client(gateway, cache=None, cap=20) as client:
        assert await failures_of(client, 300) == []
        assert client.stats.endpoints["a"].limit == 20
    assert endpoint.rate_limited == 0
    assert endpoint.max_in_flight == 20
    assert endpoint.completions == 300


async def test_no_more_requests_go_than_the_connection_pool_holds(gateway: FakeGateway) -> None:
    # A learned limit of 50 over a pool of 5 connections: the other callers queue here,
    # first come first served, not inside aiohttp waiting for a connection.
    config = AdmissionConfig(initial_limit=50)
    timeouts = Timeouts(max_connections=5)
    async with make_client(gateway, cache=None, admission=config, timeouts=timeouts) as client:
        calls = asyncio.gather(*(client.complete(**ask(f"pooled {i}")) for i in range(40)))

        def admitted_or_queued() -> int:
            figures = client.stats.endpoints.get("a")
            return 0 if figures is None else figures.in_flight + figures.queued

        await until(lambda: admitted_or_queued() == 40)  # every call has reached admission
        figures = client.stats.endpoints["a"]
        assert (figures.limit, figures.in_flight, figures.queued) == (5, 5, 35)
        await calls
    assert gateway.endpoint("a").max_in_flight == 5


async def test_a_retry_after_pauses_every_caller_of_the_endpoint_once(
    gateway: FakeGateway,
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.close_for(2.0, now=gateway.clock())
    config = AdmissionConfig()
    async with make_client(gateway, cache=None) as client:
        assert await failures_of(client, 50) == []
        figures = client.stats.endpoints["a"]
    # Only the first round, sent before anyone knew, met the closed door; the other
    # callers waited out the one pause instead of each spending an attempt on it.
    assert 1 <= endpoint.rate_limited <= config.initial_limit
    assert endpoint.calls == 50 + endpoint.rate_limited
    assert figures.paused_seconds > 0


async def test_a_deadline_shorter_than_the_queue_fails_unsent(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.delay(FOREVER)
    async with make_client(gateway, cache=None, cap=1) as client:
        holder = asyncio.create_task(client.complete(**ask("the slow one")))
        await endpoint.wait_for_calls(1)
        with pytest.raises(APITimeoutError, match="admission to endpoint 'a', queued"):
            await client.complete(**ask("the impatient one"), timeout=0.05)
        # Its flight, orphaned, leaves the queue as it unwinds.
        await until(lambda: client.stats.endpoints["a"].queued == 0)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        await until(lambda: client.stats.endpoints["a"].in_flight == 0)
    assert endpoint.calls == 1  # the impatient call was never sent


async def test_a_pause_past_the_deadline_fails_at_once_unsent(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.close_for(FOREVER, now=gateway.clock())
    retry = RetryConfig(max_attempts=3, max_retry_after=FOREVER)
    async with make_client(gateway, cache=None, retry=retry) as client:
        with pytest.raises(RateLimitError):  # sent: the 429 it met, its retry unsent
            await client.complete(**ask("first"), timeout=5)
        assert endpoint.calls == 1
        with pytest.raises(APITimeoutError, match="paused by its rate limit"):
            await client.complete(**ask("second"), timeout=5)
    assert endpoint.calls == 1


async def test_cancelled_queued_callers_free_their_places(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.delay(FOREVER)
    # No listing to fetch: its GET would be held on the wire too, and counted in flight.
    async with make_client(gateway, cache=None, cap=1, prices=PriceTable(None)) as client:
        holder = asyncio.create_task(client.complete(**ask("holder")))
        await endpoint.wait_for_calls(1)
        quitters = [asyncio.create_task(client.complete(**ask(f"quit {i}"))) for i in range(5)]
        stayer = asyncio.create_task(client.complete(**ask("stayer")))
        await until(lambda: client.stats.endpoints["a"].queued == 6)
        for task in quitters:
            task.cancel()
        await until(lambda: client.stats.endpoints["a"].queued == 1)
        holder.cancel()
        completion = await stayer
        assert completion.endpoint == "a"
        assert endpoint.calls == 2  # the holder and the stayer; no quitter was sent
        figures = client.stats.endpoints["a"]
        assert (figures.in_flight, figures.queued) == (0, 0)
        await asyncio.gather(holder, *quitters, return_exceptions=True)


async def test_a_slot_handed_to_a_cancelled_waiter_passes_on() -> None:
    admission = Admission(Endpoint("a", "http://localhost", max_in_flight=1), AdmissionConfig())
    first = await admission.acquire()
    handed = asyncio.create_task(admission.acquire())
    next_in_line = asyncio.create_task(admission.acquire())
    await until(lambda: admission.stats().queued == 2)
    first.release()  # hands the slot to ``handed``, which is cancelled before it runs
    handed.cancel()
    slot = await next_in_line
    assert handed.cancelled()
    assert admission.in_flight == 1
    slot.release()
    assert admission.in_flight == 0


async def test_hits_and_coalesced_callers_never_queue(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    async with make_client(gateway, cap=1) as client:
        await client.complete(**ask("cached"))
        endpoint.delay(FOREVER)
        holder = asyncio.create_task(client.complete(**ask("holder")))
        await endpoint.wait_for_calls(2)
        followers = [asyncio.create_task(client.complete(**ask("holder"))) for _ in range(5)]
        hit = await client.complete(**ask("cached"))
        assert hit.cache is CacheStatus.HIT
        figures = client.stats.endpoints["a"]
        assert (figures.in_flight, figures.queued) == (1, 0)
        assert endpoint.calls == 2
        for task in (holder, *followers):
            task.cancel()
        await asyncio.gather(holder, *followers, return_exceptions=True)


async def test_events_carry_the_time_queued(gateway: FakeGateway) -> None:
    events: list[Any] = []
    async with make_client(gateway, cache=None, cap=1, on_event=events.append) as client:
        await asyncio.gather(*(client.complete(**ask(f"q {i}")) for i in range(3)))
    assert len(events) == 3
    assert sum(1 for event in events if event.queued_seconds > 0) >= 1
    assert all(event.admission is not None for event in events)
    assert client.stats.as_dict()["endpoints"]["a"]["limit"] == 1
    copied = copy.deepcopy(client.stats)  # the live admission is shared, not copied
    assert copied.endpoints["a"] == client.stats.endpoints["a"]


async def test_prometheus_gauges_show_each_endpoints_admission(gateway: FakeGateway) -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    # No listing: fetched behind answers that report their cost, it would be in flight.
    prices = PriceTable(None)
    async with make_client(gateway, cache=None, cap=2, on_event=metrics, prices=prices) as client:
        await asyncio.gather(*(client.complete(**ask(f"q {i}")) for i in range(4)))
    sample = registry.get_sample_value
    assert sample("limpet_admission_limit", {"endpoint": "a"}) == 2
    assert sample("limpet_admission_in_flight", {"endpoint": "a"}) == 0
    assert sample("limpet_admission_queued", {"endpoint": "a"}) == 0


async def test_a_requests_window_is_kept_by_its_headers_without_a_429(
    gateway: FakeGateway,
) -> None:
    # 10 requests a second: 30 calls need three windows. The answers' remaining-requests
    # and reset headers hold every caller back before the door closes.
    endpoint = gateway.endpoint("a")
    endpoint.limit(requests=10, per=1.0)
    async with make_client(gateway, cache=None) as client:
        assert await failures_of(client, 30) == []
        assert client.stats.endpoints["a"].paused_seconds > 0
    assert endpoint.rate_limited == 0
    assert endpoint.completions == 30


async def test_the_gateway_window_answers_429_with_openai_headers(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.limit(requests=2, per=FOREVER)
    now = gateway.clock()
    assert endpoint.refusal(now) is None
    assert endpoint.quota_headers(now)["x-ratelimit-remaining-requests"] == "1"
    assert endpoint.refusal(now) is None
    refused = endpoint.refusal(now)
    assert refused is not None
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert float(refused["retry-after-ms"]) == pytest.approx(FOREVER * 1000, rel=0.01)
    assert endpoint.rate_limited == 1


async def test_waiters_are_admitted_first_come_first_served_and_a_retry_first() -> None:
    admission = Admission(Endpoint("a", "http://localhost", max_in_flight=1), AdmissionConfig())
    holder = await admission.acquire()
    order: list[str] = []

    async def wait(name: str, *, first: bool = False) -> None:
        slot = await admission.acquire(first=first)
        order.append(name)
        slot.release()

    tasks = [asyncio.create_task(wait(f"caller {i}")) for i in range(5)]
    await until(lambda: admission.stats().queued == 5)
    tasks.append(asyncio.create_task(wait("a retry", first=True)))
    await until(lambda: admission.stats().queued == 6)
    holder.release()
    await asyncio.gather(*tasks)
    assert order == ["a retry", *(f"caller {i}" for i in range(5))]


async def test_calls_that_fail_unsent_behind_a_pause_never_eject_the_endpoint(
    gateway: FakeGateway,
) -> None:
    # Regression: each call whose deadline passed while it waited out the 429's pause
    # (QueuedTooLong, nothing sent) counted as the endpoint's failure: a few ejected it,
    # though a 429 never ejects an endpoint.
    endpoint = gateway.endpoint("a")
    router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
    async with Client(router=router, cache=None, retry=FAST_RETRY) as client:
        await client.complete(**ask("warm"))
        endpoint.fail(429, retry_after=FOREVER)
        with pytest.raises(RateLimitError):  # the one the 429 answered
            await client.complete(**ask("refused"), timeout=5)
        for i in range(5):
            with pytest.raises(APITimeoutError, match="paused by its rate limit"):
                await client.complete(**ask(f"question {i}"), timeout=5)
    status, stats = router.status()["a"], router.stats
    assert (status.state, status.failures) == ("healthy", 0)
    assert (stats.failures, stats.ejections) == (0, 0)
    assert endpoint.calls == 2  # the warm call and the one the 429 answered


async def test_the_price_listing_fetch_is_admitted_under_the_cap() -> None:
    # Regression: the price table's ``GET /models`` skipped admission, so under
    # ``max_in_flight=1`` it went out beside another call's chat request. Each request
    # here is held at the upstream until a third has arrived (two would be on the wire:
    # the cap broken) or until one waits in admission (it is kept: the cap holds).
    seen: list[tuple[str, str, int]] = []
    in_flight = peak = 0
    client: Client | None = None

    def someone_queued() -> bool:
        figures = None if client is None else client.stats.endpoints.get("a")
        return figures is not None and figures.queued > 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append((request.method, request.path, in_flight))
        try:
            await until(lambda: len(seen) == 3 or someone_queued())
            if request.method == "GET":
                return web.json_response({"data": [LISTED]})
            return web.json_response(UNPRICED_ANSWER)
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with served(app) as url:
        endpoint = Endpoint("a", url + "/v1", max_in_flight=1)
        async with Client(endpoints=[endpoint], cache=None) as client:
            answers = await asyncio.gather(
                *(client.complete(**ask(f"question {i}", model=LISTED_MODEL)) for i in range(2))
            )
    assert peak == 1
    assert [(method, in_flight) for method, _, in_flight in seen] == [
        ("POST", 1),
        ("POST", 1),
        ("GET", 1),
    ]
    assert all(answer.cost is not None and answer.cost.usd > 0 for answer in answers)

"""Calls that bring their caller's own credentials (``extra_headers={"Authorization":
...}``, as a multi-tenant service or ``limpet serve`` sends them) through one endpoint: one
caller's 429 and ``Retry-After``, or refused key, is that caller's alone. Before, it paused
or ejected the endpoint for every caller. Against the FakeGateway over loopback; counts,
never times."""

from __future__ import annotations

import asyncio

import pytest

from limpet import AdmissionConfig, Client, Endpoint, PriceTable, RetryConfig, RoutingConfig
from limpet.errors import APIStatusError, APITimeoutError, RateLimitError
from limpet.http.admission import MAX_CALLERS_ADMISSIONS, Admissions
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway
from tests.integration.chat import ask

FOREVER = 600.0
# A Retry-After past every call's deadline fails at once, unsent (no wait in a test).
RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)
# One attempt a call: one fault each.
ONCE = RetryConfig(max_attempts=1)


def key(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer sk-{tenant}"}


async def test_one_callers_retry_after_pauses_that_caller_alone(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    client = Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=None, retry=RETRY)
    async with client:
        endpoint.fail(429, retry_after=FOREVER)
        with pytest.raises(RateLimitError):  # its retry would wait past the deadline
            await client.complete(**ask("tenant a, first"), extra_headers=key("a"), timeout=5)
        # That caller's next call waits out its own pause: past its deadline, unsent.
        with pytest.raises(APITimeoutError, match="paused by its rate limit"):
            await client.complete(**ask("tenant a, again"), extra_headers=key("a"), timeout=5)
        # Another caller's key, and the endpoint's own, were never limited.
        other = await client.complete(**ask("tenant b"), extra_headers=key("b"), timeout=5)
        own = await client.complete(**ask("no key of its own"), timeout=5)
        figures = client.stats.endpoints["a"]
    assert other.content and own.content
    assert endpoint.calls == 3  # the 429, tenant b's, the plain call
    # The caller's 429 and pause count in the endpoint's figures; the endpoint itself
    # is not paused.
    assert (figures.rate_limited, figures.paused_for) == (1, 0.0)
    assert figures.paused_seconds > 0


async def test_the_endpoints_own_key_still_pauses_every_caller_without_one(
    gateway: FakeGateway,
) -> None:
    # The contrast: a 429 to the endpoint's own key is the endpoint's limit.
    endpoint = gateway.endpoint("a")
    client = Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=None, retry=RETRY)
    async with client:
        endpoint.fail(429, retry_after=FOREVER)
        with pytest.raises(RateLimitError):  # sent: the 429 it met, its retry unsent
            await client.complete(**ask("first"), timeout=5)
        with pytest.raises(APITimeoutError, match="paused by its rate limit"):
            await client.complete(**ask("second"), timeout=5)
    assert endpoint.calls == 1


async def test_a_key_the_endpoint_sends_itself_is_not_the_callers(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    base = Endpoint("a", gateway.base_url("a"), api_key="sk-shared")
    async with Client(endpoints=[base], cache=None, retry=RETRY) as client:
        endpoint.fail(429, retry_after=FOREVER)
        with pytest.raises(RateLimitError):  # sent: the 429 it met, its retry unsent
            await client.complete(**ask("first"), extra_headers=key("shared"), timeout=5)
        with pytest.raises(APITimeoutError, match="paused by its rate limit"):
            await client.complete(**ask("second"), timeout=5)
    assert endpoint.calls == 1


@pytest.mark.parametrize("status", [401, 402, 403, 429])
async def test_a_callers_refused_key_never_counts_against_the_endpoint(
    gateway: FakeGateway, status: int
) -> None:
    endpoint = gateway.endpoint("a")
    config = RoutingConfig(failure_threshold=2)
    router = StickyRouter([Endpoint("a", gateway.base_url("a"))], config=config)
    calls = 4
    async with Client(router=router, cache=None, retry=ONCE, admission=False) as client:
        endpoint.fail(status, times=calls)
        for i in range(calls):
            with pytest.raises(APIStatusError):
                await client.complete(**ask(f"bad key {i}"), extra_headers=key("bad"), timeout=5)
        served = await client.complete(**ask("another caller"), extra_headers=key("good"))
    status_now, stats = router.status()["a"], router.stats
    assert (status_now.state, status_now.failures) == ("healthy", 0)
    assert (stats.failures, stats.ejections) == (0, 0)
    assert served.endpoint == "a"


async def test_the_endpoints_own_key_refused_still_ejects_it(gateway: FakeGateway) -> None:
    # The contrast: the same refusals of the endpoint's own key are the endpoint's fault.
    endpoint = gateway.endpoint("a")
    config = RoutingConfig(failure_threshold=2)
    router = StickyRouter([Endpoint("a", gateway.base_url("a"))], config=config)
    async with Client(router=router, cache=None, retry=ONCE, admission=False) as client:
        endpoint.fail(401, times=2)
        for i in range(2):
            with pytest.raises(APIStatusError):
                await client.complete(**ask(f"refused {i}"), timeout=5)
    assert router.status()["a"].state == "ejected"
    assert router.stats.ejections == 1


async def test_callers_admissions_are_forgotten_once_idle_and_kept_while_paused() -> None:
    admissions = Admissions(AdmissionConfig())
    base = Endpoint("a", "https://gateway.test/v1", api_key="sk-shared")
    paused = admissions.of(base.with_headers(key("paused")))
    paused.pause(FOREVER)
    busy = admissions.of(base.with_headers(key("busy")))
    slot = busy.admit_now()
    assert slot is not None
    for i in range(3 * MAX_CALLERS_ADMISSIONS):
        admissions.of(base.with_headers(key(f"tenant {i}")))
    assert len(admissions._callers) <= MAX_CALLERS_ADMISSIONS
    # The paused caller is still paused, the busy one still counts its request.
    assert admissions.of(base.with_headers(key("paused"))) is paused
    assert admissions.of(base.with_headers(key("busy"))) is busy
    assert admissions.stats()["a"].in_flight == 1
    # The endpoint's own admission is not a caller's, and never forgotten.
    own = admissions.of(base)
    assert own is admissions.of(base.with_headers({"X-Title": "demo"})) is not paused
    assert own.paused_for() == 0.0
    slot.release()


async def test_callers_figures_add_up_in_the_endpoints_stats(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.hold_answers()
    # No price listing: its fetch, started by the first answer, would be in flight too.
    endpoints = [Endpoint("a", gateway.base_url("a"))]
    async with Client(endpoints=endpoints, cache=None, prices=PriceTable(None)) as client:
        calls = [
            asyncio.create_task(client.complete(**ask(f"q{i}"), extra_headers=key(str(i % 3))))
            for i in range(6)
        ]
        calls.append(asyncio.create_task(client.complete(**ask("own"))))
        await endpoint.wait_for_calls(7)
        assert client.stats.endpoints["a"].in_flight == 7
        endpoint.release_answers()
        await asyncio.gather(*calls)
        assert client.stats.endpoints["a"].in_flight == 0


async def test_a_burst_of_keys_in_flight_is_kept_and_counted_whole() -> None:
    # More callers' keys in flight at once than are kept when idle: none is forgotten
    # (each holds a request), and the endpoint's figures add them all up.
    admissions = Admissions(AdmissionConfig())
    base = Endpoint("a", "https://gateway.test/v1")
    slots = []
    for i in range(3 * MAX_CALLERS_ADMISSIONS):
        slot = admissions.of(base.with_headers(key(f"tenant {i}"))).admit_now()
        assert slot is not None
        slots.append(slot)
    assert len(admissions._callers) == 3 * MAX_CALLERS_ADMISSIONS
    assert admissions.stats()["a"].in_flight == 3 * MAX_CALLERS_ADMISSIONS
    for slot in slots:
        slot.release()
    assert admissions.stats()["a"].in_flight == 0
    # Idle now: forgotten at the next look, once the map has doubled since the last.
    for i in range(MAX_CALLERS_ADMISSIONS + 1):
        admissions.of(base.with_headers(key(f"later {i}")))
    assert len(admissions._callers) <= MAX_CALLERS_ADMISSIONS


@pytest.mark.parametrize(
    "headers",
    [
        {"cf-aig-cache-key": "request-2"},  # a gateway's per-request header, no key
        {"OpenAI-Project": "proj_abc"},  # a project chosen beside the endpoint's key
        {"authorization": "bearer  sk-shared"},  # the endpoint's own key, written otherwise
        {"Proxy-Authorization": "Basic cHJveHk="},  # a proxy's, not the provider's
        {"X-Api-Key": "sk-other"},  # added beside the endpoint's Authorization, not for it
    ],
)
async def test_a_call_sending_the_endpoints_own_key_is_held_by_its_pause(
    gateway: FakeGateway, headers: dict[str, str]
) -> None:
    endpoint = gateway.endpoint("a")
    base = Endpoint("a", gateway.base_url("a"), api_key="sk-shared")
    async with Client(endpoints=[base], cache=None, retry=RETRY) as client:
        endpoint.fail(429, retry_after=FOREVER)
        with pytest.raises(RateLimitError):  # sent: the 429 it met, its retry unsent
            await client.complete(**ask("first"), timeout=5)
        with pytest.raises(APITimeoutError, match="paused by its rate limit"):
            await client.complete(**ask("second"), extra_headers=headers, timeout=5)
    assert endpoint.calls == 1


async def test_the_endpoints_own_key_refused_with_a_project_beside_it_still_ejects_it(
    gateway: FakeGateway,
) -> None:
    endpoint = gateway.endpoint("a")
    config = RoutingConfig(failure_threshold=2)
    revoked = Endpoint("a", gateway.base_url("a"), api_key="sk-revoked")
    router = StickyRouter([revoked], config=config)
    async with Client(router=router, cache=None, retry=ONCE, admission=False) as client:
        endpoint.fail(401, times=2)
        for i in range(2):
            with pytest.raises(APIStatusError):
                await client.complete(
                    **ask(f"q{i}"), extra_headers={"OpenAI-Project": "proj_abc"}, timeout=5
                )
    assert router.status()["a"].state == "ejected"


def test_a_copy_of_a_copy_is_judged_by_what_it_sends_whole() -> None:
    base = Endpoint("a", "https://x.test/v1", api_key="sk-1")
    tenant = base.with_headers(key("2"))
    assert tenant.with_headers(key("1")).callers_credentials is None  # the endpoint's key again
    # A key header added beside the endpoint's own key: the endpoint's key is still billed.
    assert base.with_headers({"X-Api-Key": "k3"}).callers_credentials is None
    tenant_with_k3 = tenant.with_headers({"X-Api-Key": "k3"})  # sends sk-2 and k3
    assert None is not tenant_with_k3.callers_credentials != tenant.callers_credentials
    # To an endpoint that sends no key, any key a call sends is the caller's.
    keyless = Endpoint("k", "https://x.test/v1")
    assert keyless.with_headers({"X-Api-Key": "k3"}).callers_credentials is not None
    assert keyless.with_headers({"X-Title": "t"}).callers_credentials is None
    assert dict(tenant_with_k3.headers or {}) == {**key("2"), "X-Api-Key": "k3"}
    # An endpoint that sends its key in a header of its own: replacing that is the caller's.
    portkey = Endpoint("p", "https://x.test/v1", headers={"X-Portkey-Api-Key": "pk-1"})
    assert portkey.with_headers({"x-portkey-api-key": "pk-1"}).callers_credentials is None
    assert portkey.with_headers({"X-Portkey-Api-Key": "pk-2"}).callers_credentials is not None


@pytest.mark.parametrize("tenants", [1, 10])
async def test_the_endpoints_cap_holds_for_every_key_together(
    gateway: FakeGateway, tenants: int
) -> None:
    # max_in_flight is the most requests sent to the endpoint at once, whoever's key
    # they carry; each key keeps its own line, limit and pause within it.
    upstream = gateway.endpoint("a")
    upstream.hold_answers()
    endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-shared", max_in_flight=2)
    async with Client(endpoints=[endpoint], cache=None) as client:
        calls = [
            asyncio.ensure_future(
                client.complete(**ask(f"q{i}"), extra_headers=key(f"tenant {i % tenants}"))
            )
            for i in range(10)
        ]
        calls.append(asyncio.ensure_future(client.complete(**ask("the endpoint's own"))))
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await upstream.wait_for_calls(2)
            while client.stats.endpoints["a"].queued < 9:  # noqa: ASYNC110 (a state)
                await asyncio.sleep(0)
        assert (upstream.calls, upstream.max_in_flight) == (2, 2)
        upstream.release_answers()
        answers = await asyncio.gather(*calls)
        figures = client.stats.endpoints["a"]
    assert all(answer.content for answer in answers)
    assert upstream.calls == 11 and upstream.max_in_flight == 2
    assert (figures.in_flight, figures.queued) == (0, 0)


async def test_a_key_waiting_for_the_endpoints_places_gets_the_next_one_freed(
    gateway: FakeGateway,
) -> None:
    # The endpoint's own callers keep a line of their own; a place freed went back to it
    # whenever it had callers queued, and another key's call waited while they had any.
    upstream = gateway.endpoint("a")
    upstream.hold_answers()
    endpoint = Endpoint("a", gateway.base_url("a"), api_key="sk-shared", max_in_flight=2)
    async with Client(endpoints=[endpoint], cache=None) as client:
        own = [asyncio.ensure_future(client.complete(**ask(f"own {i}"))) for i in range(6)]
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await upstream.wait_for_calls(2)
            tenant = asyncio.ensure_future(
                client.complete(**ask("tenant"), extra_headers=key("tenant"))
            )
            while client.stats.endpoints["a"].queued < 5:  # noqa: ASYNC110 (a state)
                await asyncio.sleep(0)
        upstream.release_answers()
        await asyncio.gather(tenant, *own)
    sent = [body["messages"][-1]["content"] for body in upstream.requests]
    assert sent[2] == "tenant", sent  # the first place freed

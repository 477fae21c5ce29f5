"""Client.complete against the real FakeGateway over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    MemoryCache,
    RedisCache,
    RetryConfig,
    TieredCache,
    Timeouts,
)
from limpet.cache import CacheBackend
from limpet.cache.capabilities import TierCapabilities
from limpet.errors import (
    APIConnectionError,
    APIError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    InternalServerError,
    InvalidRequestError,
    RateLimitError,
)
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask
from tests.openai_shapes import assert_chat_completion
from tests.redis_servers import free_port

KEY = "sk-or-v1-0123456789abcdef-secret"
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)

pytestmark = pytest.mark.gateway(endpoints=("a", "b"), api_key=KEY)


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[Client]:
    async with Client(
        endpoints=[Endpoint("a", gateway.base_url("a"), api_key=KEY)], retry=FAST_RETRY
    ) as c:
        yield c


async def test_a_repeated_call_is_a_hit_with_no_upstream_call(
    client: Client, gateway: FakeGateway
) -> None:
    first = await client.complete(**ask())
    second = await client.complete(**ask())
    assert (first.cache, second.cache) == (CacheStatus.MISS, CacheStatus.HIT)
    assert gateway.endpoint("a").calls == 1
    assert second.content == first.content and first.content
    assert second.raw == first.raw
    assert second.usage == first.usage
    assert second.key == first.key is not None
    assert second.endpoint == "a"
    assert first.cost is not None and first.cost.usd > 0
    assert second.cost is not None
    assert (second.cost.usd, second.cost.saved_usd) == (0.0, first.cost.usd)
    stats = client.stats
    assert (stats.hits, stats.misses, stats.upstream_calls) == (1, 1, 1)
    assert stats.saved_usd == pytest.approx(first.cost.usd)
    assert stats.hit_rate == 0.5


async def test_mutating_a_returned_body_never_changes_the_cache(client: Client) -> None:
    first = await client.complete(**ask())
    first.raw["choices"][0]["message"]["content"] = "tampered"
    second = await client.complete(**ask())
    assert second.content != "tampered"


async def test_sampled_requests_are_never_cached(client: Client, gateway: FakeGateway) -> None:
    for _ in range(3):
        c = await client.complete(**ask(temperature=0.7))
        assert c.cache is CacheStatus.BYPASS
        assert c.key is None
    no_temperature = {k: v for k, v in ask().items() if k != "temperature"}
    assert (await client.complete(**no_temperature)).cache is CacheStatus.BYPASS
    assert gateway.endpoint("a").calls == 4
    assert client.stats.bypassed == 4


async def test_bypass_refresh_and_force(client: Client, gateway: FakeGateway) -> None:
    calls = gateway.endpoint("a")
    await client.complete(**ask())
    assert (await client.complete(**ask(), cache="bypass")).cache is CacheStatus.BYPASS
    assert calls.calls == 2
    refreshed = await client.complete(**ask(), cache="refresh")
    assert refreshed.cache is CacheStatus.MISS
    assert calls.calls == 3
    assert (await client.complete(**ask())).raw == refreshed.raw  # refresh stored its answer
    assert calls.calls == 3
    forced = [await client.complete(**ask(temperature=0.9), cache="force") for _ in range(2)]
    assert [f.cache for f in forced] == [CacheStatus.MISS, CacheStatus.HIT]
    assert calls.calls == 4


async def test_per_call_ttl_expires_the_entry(gateway: FakeGateway) -> None:
    clock = [0.0]
    cache = MemoryCache(clock=lambda: clock[0])
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], cache=cache) as client:
        await client.complete(**ask(), ttl=5)
        clock[0] = 4.0
        assert (await client.complete(**ask())).cache is CacheStatus.HIT
        clock[0] = 5.0
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert gateway.endpoint("a").calls == 2


async def test_429_with_retry_after_then_success_takes_two_attempts(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").fail(429, retry_after=0.01)
    c = await client.complete(**ask())
    assert c.content
    assert gateway.endpoint("a").calls == 2
    assert client.stats.upstream_calls == 1


async def test_400_is_raised_once_typed_with_its_status(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").fail(400, message="bad tool schema")
    with pytest.raises(BadRequestError) as info:
        await client.complete(**ask())
    assert info.value.status_code == 400
    assert "bad tool schema" in str(info.value)
    assert info.value.endpoint == "a"
    assert gateway.endpoint("a").calls == 1
    assert client.stats.errors == 1


async def test_5xx_is_retried_up_to_the_limit(client: Client, gateway: FakeGateway) -> None:
    gateway.endpoint("a").fail(502, times=5)
    with pytest.raises(InternalServerError) as info:
        await client.complete(**ask())
    assert info.value.status_code == 502
    assert gateway.endpoint("a").calls == FAST_RETRY.max_attempts
    gateway.endpoint("a").clear_faults()
    assert (await client.complete(**ask())).cache is CacheStatus.MISS  # errors are not cached


async def test_a_rate_limit_that_outlasts_the_retries_is_a_rate_limit_error(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").fail(429, times=3, retry_after=0)
    with pytest.raises(RateLimitError) as info:
        await client.complete(**ask())
    assert info.value.retry_after == 0.0


async def test_malformed_and_wrong_shape_bodies_are_response_errors(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").malformed()
    with pytest.raises(APIResponseError, match="not JSON") as info:
        await client.complete(**ask())
    assert info.value.status_code == 200
    gateway.endpoint("a").wrong_shape()
    with pytest.raises(APIResponseError, match="not a chat completion"):
        await client.complete(**ask())
    assert gateway.endpoint("a").calls == 2  # neither is retried


async def test_a_dropped_connection_is_retried_then_a_connection_error(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").drop_connection(times=1)
    assert (await client.complete(**ask("once"))).content
    gateway.endpoint("a").drop_connection(times=3)
    with pytest.raises(APIConnectionError):
        await client.complete(**ask("thrice"))


async def test_a_slow_upstream_is_a_timeout_error(gateway: FakeGateway) -> None:
    gateway.endpoint("a").delay(5.0)
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(
        endpoints=[endpoint], retry=RetryConfig(max_attempts=1), timeouts=Timeouts(total=0.2)
    ) as client:
        with pytest.raises(APITimeoutError):
            await client.complete(**ask())


async def test_a_wrong_key_is_an_authentication_error_that_does_not_show_the_key(
    gateway: FakeGateway,
) -> None:
    wrong = "sk-or-v1-wrong-key-that-must-not-leak"
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=wrong)
    async with Client(endpoints=[endpoint]) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.complete(**ask())
    assert wrong not in str(info.value) and wrong not in repr(info.value)


async def test_the_api_key_appears_in_no_error_and_no_repr(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    errors: list[BaseException] = []
    arrangements: list[Callable[[], None]] = [
        lambda: ep.fail(400, message=f"your key {KEY} is odd"),
        lambda: ep.fail(503, times=3),
        ep.malformed,
        ep.wrong_shape,
        lambda: ep.drop_connection(times=3),
    ]
    for arrange in arrangements:
        arrange()
        with pytest.raises(APIError) as info:
            await client.complete(**ask())
        errors.append(info.value)
    for error in errors:
        for text in (str(error), repr(error), str(error.__cause__), repr(error.__cause__)):
            assert KEY not in text
    assert KEY not in repr(client)
    assert KEY not in repr(client.endpoints)
    assert KEY not in str(client.stats)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"cache": "always"}, "cache"),
        ({"ttl": -5}, "ttl"),
        ({"stream": True}, "stream"),
        ({"metadata": {"when": object()}}, "metadata.when"),
    ],
)
async def test_bad_input_raises_before_any_upstream_call(
    client: Client, gateway: FakeGateway, override: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await client.complete(**{**ask(), **override})
    assert info.value.field == field
    assert gateway.total_calls == 0


async def test_concurrent_identical_misses_make_one_upstream_call(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").latency = 0.05
    results = await asyncio.gather(*(client.complete(**ask()) for _ in range(1000)))
    assert gateway.endpoint("a").calls == 1
    assert len({r.content for r in results}) == 1
    statuses = [r.cache for r in results]
    assert statuses.count(CacheStatus.MISS) == 1
    assert statuses.count(CacheStatus.COALESCED) == 999
    assert all(r.cost is not None and r.cost.usd == 0 for r in results if r.cache != "miss")
    assert client.stats.coalesced == 999


async def test_fifty_keys_times_twenty_callers_make_fifty_calls(
    client: Client, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").latency = 0.02
    results = await asyncio.gather(
        *(client.complete(**ask(f"question {i % 50}")) for i in range(1000))
    )
    assert gateway.endpoint("a").calls == 50
    assert len({r.content for r in results}) == 50


async def test_cancelling_ten_of_a_hundred_waiters(client: Client, gateway: FakeGateway) -> None:
    gateway.endpoint("a").latency = 0.2
    tasks = [asyncio.create_task(client.complete(**ask())) for _ in range(100)]
    await gateway.endpoint("a").wait_for_calls(1)  # the leader's request is upstream
    for task in tasks[:10]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 10
    assert len({r.content for r in results[10:] if not isinstance(r, BaseException)}) == 1
    assert gateway.endpoint("a").calls == 1


async def test_a_leader_error_reaches_every_waiter_and_is_not_cached(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    ep.fail(400, message="no")
    results = await asyncio.gather(
        *(client.complete(**ask()) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, BadRequestError) for r in results)
    assert ep.calls == 1
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert ep.calls == 2


async def test_a_leader_that_exhausts_its_retries_promotes_one_waiter(
    client: Client, gateway: FakeGateway
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    ep.fail(503, times=FAST_RETRY.max_attempts)
    results = await asyncio.gather(
        *(client.complete(**ask()) for _ in range(20)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], InternalServerError)
    answers = [r for r in results if not isinstance(r, BaseException)]
    assert len(answers) == 19 and len({a.content for a in answers}) == 1
    assert ep.calls == FAST_RETRY.max_attempts + 1


async def test_coalescing_off_sends_every_miss(gateway: FakeGateway) -> None:
    gateway.endpoint("a").latency = 0.02
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], coalesce=False) as client:
        await asyncio.gather(*(client.complete(**ask()) for _ in range(20)))
    assert gateway.endpoint("a").calls == 20


async def test_no_cache_still_coalesces(gateway: FakeGateway) -> None:
    gateway.endpoint("a").latency = 0.02
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], cache=None) as client:
        results = await asyncio.gather(*(client.complete(**ask()) for _ in range(20)))
        assert (await client.complete(**ask())).cache is CacheStatus.BYPASS
    assert gateway.endpoint("a").calls == 2
    assert sorted(r.cache.value for r in results).count("coalesced") == 19


async def test_failover_to_the_next_endpoint(gateway: FakeGateway) -> None:
    endpoints = [Endpoint(n, gateway.base_url(n), api_key=KEY) for n in ("a", "b")]
    async with Client(endpoints=endpoints, retry=RetryConfig(max_attempts=1)) as client:
        first = await client.complete(**ask())
        other = "b" if first.endpoint == "a" else "a"
        gateway.endpoint(first.endpoint).take_down()
        # Same conversation (so the same first choice), another request.
        moved = await client.complete(**ask(max_tokens=99))
    assert moved.endpoint == other
    assert gateway.endpoint(first.endpoint).calls == 2
    assert gateway.endpoint(other).calls == 1
    assert client.stats.upstream_calls == 3


async def test_invalidate_by_model_and_globally(client: Client, gateway: FakeGateway) -> None:
    other_model = "openai/gpt-5-mini"
    await client.complete(**ask())
    await client.complete(**{**ask(), "model": other_model})
    await client.invalidate(model=MODEL)
    assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert (await client.complete(**{**ask(), "model": other_model})).cache is CacheStatus.HIT
    await client.invalidate()
    assert (await client.complete(**{**ask(), "model": other_model})).cache is CacheStatus.MISS
    assert gateway.endpoint("a").calls == 4


class DictTier:
    """An in-process tier of a user's own making (a dict, no expiry)."""

    capabilities: ClassVar[TierCapabilities] = TierCapabilities(local=True)

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.values[key] = value

    async def delete(self, key: str) -> None:
        self.values.pop(key, None)

    async def clear(self) -> None:
        self.values.clear()

    async def aclose(self) -> None:
        pass


def shared_caches(shape: str) -> tuple[CacheBackend | TieredCache, CacheBackend | TieredCache]:
    """Two Clients' caches, sharing in-process entries as ``shape`` says."""
    first, second = MemoryCache(), MemoryCache()
    if shape == "one MemoryCache":
        return first, first
    if shape == "one TieredCache":
        tiered = TieredCache(first)
        return tiered, tiered
    if shape == "a MemoryCache and a TieredCache over it and another":
        return first, TieredCache(first, second)
    if shape == "two MemoryCaches in either order":
        return TieredCache(first, second), TieredCache(second, first)
    own = DictTier()
    return own, own


@pytest.mark.parametrize(
    "shape",
    [
        "one MemoryCache",
        "one TieredCache",
        "a MemoryCache and a TieredCache over it and another",
        "two MemoryCaches in either order",
        "one tier of the user's own",
    ],
)
async def test_clients_sharing_an_in_process_cache_share_its_invalidations(
    gateway: FakeGateway, shape: str
) -> None:
    """Two Clients sharing in-process entries (no tier keeps generations) count
    generations together: one's invalidation reaches the other's reads at once, and an
    answer stored before an invalidation is never served after it, whoever stored it."""
    cache_a, cache_b = shared_caches(shape)
    endpoints = [Endpoint("a", gateway.base_url("a"), api_key=KEY)]
    async with (
        Client(endpoints=endpoints, cache=cache_a) as a,
        Client(endpoints=endpoints, cache=cache_b) as b,
    ):
        assert (await b.complete(**ask())).cache is CacheStatus.MISS
        assert (await a.complete(**ask())).cache is CacheStatus.HIT  # shared on purpose
        await b.invalidate(MODEL)
        assert (await a.complete(**ask())).cache is CacheStatus.MISS  # b's reaches a
        await a.invalidate(MODEL)  # a's own count, after b's
        stored_before = await a.complete(**ask())
        assert stored_before.cache is CacheStatus.MISS
        await b.invalidate(MODEL)  # b, counting alone, would now key as a did above
        after = await b.complete(**ask())
        assert after.cache is CacheStatus.MISS
        assert after.key != stored_before.key
        assert (await a.complete(**ask())).cache is CacheStatus.HIT  # b's fresh answer
        assert gateway.endpoint("a").calls == 4


async def test_forget_deletes_one_request(client: Client, gateway: FakeGateway) -> None:
    await client.complete(**ask("one"))
    await client.complete(**ask("two"))
    key = await client.forget(**ask("one"))
    assert (await client.complete(**ask("one"))).cache is CacheStatus.MISS
    assert (await client.complete(**ask("two"))).cache is CacheStatus.HIT
    assert (await client.complete(**ask("one"))).key == key


@pytest.mark.parametrize(
    "options",
    [
        {"extra_body": {"seed": 7}},
        {"extra_headers": {"Authorization": f"Bearer {KEY}"}},  # a scope of its own
        {"ttl": 60.0, "timeout": 30.0, "cache": "force"},  # never in the key
        {"stream": True},  # a stream()'s arguments name the same entry
    ],
    ids=["extra_body", "extra_headers", "call_options", "stream"],
)
async def test_forget_takes_the_calls_own_arguments_and_deletes_its_entry(
    client: Client, options: dict[str, Any]
) -> None:
    called = {name: value for name, value in options.items() if name != "stream"}
    first = await client.complete(**ask(**called))
    key = await client.forget(**ask(**options))
    assert key == first.key
    again = await client.complete(**ask(**called))
    assert (again.cache, again.key) == (CacheStatus.MISS, key)


async def test_namespaces_share_nothing(gateway: FakeGateway) -> None:
    cache = MemoryCache()
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    tenant_a = Client(endpoints=[endpoint], cache=cache, namespace="tenant-a")
    tenant_b = Client(endpoints=[endpoint], cache=cache, namespace="tenant-b")
    assert (await tenant_a.complete(**ask())).cache is CacheStatus.MISS
    assert (await tenant_b.complete(**ask())).cache is CacheStatus.MISS
    assert (await tenant_a.complete(**ask())).cache is CacheStatus.HIT
    await tenant_a.aclose()
    await tenant_b.aclose()


async def test_attribution_headers_are_sent_and_stay_out_of_the_key(
    gateway: FakeGateway,
) -> None:
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with (
        Client(
            endpoints=[endpoint], app_url="https://example.test", app_title="Example"
        ) as attributed,
        Client(endpoints=[endpoint]) as plain,
    ):
        a = await attributed.complete(**ask())
        headers = gateway.endpoint("a").last_headers
        b = await plain.complete(**ask())
    assert a.key == b.key
    assert headers is not None
    assert headers.get("HTTP-Referer") == "https://example.test"
    assert headers.get("X-Title") == "Example"


@pytest.mark.redis
async def test_endpoint_extra_body_is_sent_and_keyed(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def client_with(extra_body: dict[str, Any] | None) -> Client:
        endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY, extra_body=extra_body)
        shared = RedisCache.from_url(redis_url, prefix=redis_prefix, write_timeout=1.0)
        return Client(endpoints=[endpoint], cache=shared)

    short = {"max_tokens": 3, "provider": {"order": ["anthropic"]}}
    async with client_with(short) as a, client_with(None) as b, client_with(dict(short)) as c:
        first = await a.complete(**ask())
        sent = gateway.endpoint("a").last_request
        assert sent is not None and sent["max_tokens"] == 3
        assert sent["provider"]["order"] == ["anthropic"]
        for client in (a, b, c):
            assert client.cache is not None
            await client.cache.tiers[0].flush()  # type: ignore[attr-defined]
        plain = await b.complete(**ask())  # never the other endpoint's short answer
        same = await c.complete(**ask())  # the same endpoint body: the same entry
    assert first.finish_reason == "length" and plain.finish_reason == "stop"
    assert (first.cache, plain.cache, same.cache) == ("miss", "miss", "hit")
    assert first.key == same.key != plain.key
    assert gateway.total_calls == 2


async def test_invalidate_reaches_this_process_while_the_shared_tier_is_down(
    gateway: FakeGateway,
) -> None:
    down = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    endpoint = Endpoint("a", gateway.base_url("a"), api_key=KEY)
    async with Client(endpoints=[endpoint], cache=TieredCache(MemoryCache(), down)) as client:
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
        assert (await client.complete(**ask())).cache is CacheStatus.HIT
        await client.invalidate()  # logged as local only, and must be that at least
        assert (await client.complete(**ask())).cache is CacheStatus.MISS
    assert gateway.total_calls == 2


async def test_environment_defaults(monkeypatch: pytest.MonkeyPatch, gateway: FakeGateway) -> None:
    monkeypatch.setenv("LIMPET_BASE_URL", gateway.base_url("a"))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    async with Client() as client:
        assert (await client.complete(**ask())).content
        assert KEY not in repr(client)
    monkeypatch.delenv("LIMPET_BASE_URL")
    assert Client().endpoints[0].base_url == "https://openrouter.ai/api/v1"


async def test_a_closed_client_refuses_calls_and_closing_twice_is_fine(client: Client) -> None:
    await client.aclose()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.complete(**ask())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoints": [], "cache": None},
        {"endpoints": [Endpoint("a", "http://x"), Endpoint("a", "http://y")]},
        {"endpoints": [Endpoint("a", "http://x")], "base_url": "http://y"},
        {"cache": "memory"},
        {"ttl": 0},
        {"auto_cache_control": "yes"},
        {"prices": {}},
    ],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Client(**kwargs)


def test_status_errors_are_typed() -> None:
    assert issubclass(RateLimitError, APIStatusError)
    assert RateLimitError.status == 429


@pytest.mark.parametrize("params", [{}, {"n": 3, "logprobs": True, "top_logprobs": 1}])
async def test_every_completion_handed_out_is_an_openai_chat_completion(
    client: Client, gateway: FakeGateway, params: dict[str, Any]
) -> None:
    ep = gateway.endpoint("a")
    ep.latency = 0.05
    shared = await asyncio.gather(*(client.complete(**ask("shapes", **params)) for _ in range(3)))
    live = next(c for c in shared if c.cache is CacheStatus.MISS)
    assert sorted(c.cache.value for c in shared) == ["coalesced", "coalesced", "miss"]
    hit = await client.complete(**ask("shapes", **params))
    bypassed = await client.complete(**ask("shapes", **params), cache="bypass")
    assert (hit.cache, bypassed.cache) == (CacheStatus.HIT, CacheStatus.BYPASS)
    for completion in (*shared, hit, bypassed):
        assert_chat_completion(completion.raw)
        assert completion.raw["choices"] == live.raw["choices"]
    assert ep.calls == 2


async def test_a_base_url_with_a_query_keeps_it_after_each_routes_path(
    gateway: FakeGateway,
) -> None:
    # Regression: "/chat/completions" was appended after the query (Azure's api-version),
    # so no call reached the API's route.
    base = gateway.base_url("a") + "?api-version=2024-10-21"
    async with Client(endpoints=[Endpoint("a", base, api_key=KEY)]) as client:
        assert (await client.complete(**ask("q"))).cache is CacheStatus.MISS
        async with client.stream(**ask("s")) as stream:
            assert [chunk async for chunk in stream]
        assert (await client.embed(model="openai/text-embedding-3-small", input=["e"])).misses
    assert gateway.endpoint("a").calls == 2  # chat calls (the embedding one counted above)

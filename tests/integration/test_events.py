"""on_event hooks, and the Prometheus and OpenTelemetry sinks built on them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from limpet import CacheStatus, Client, Cost, Endpoint, RetryConfig, Usage
from limpet.errors import BadRequestError
from limpet.observe.events import CallEvent
from limpet.observe.metrics import PrometheusMetrics
from limpet.observe.tracing import OpenTelemetrySpans
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask


def client_for(gateway: FakeGateway, **kwargs: Any) -> Client:
    endpoint = Endpoint("a", gateway.base_url("a"))
    return Client(endpoints=[endpoint], retry=RetryConfig(max_attempts=1), **kwargs)


async def test_every_call_makes_one_event_and_a_broken_hook_never_fails_a_call(
    gateway: FakeGateway,
) -> None:
    events: list[CallEvent] = []

    def broken(event: CallEvent) -> None:
        raise RuntimeError("observer bug")

    async with client_for(gateway, on_event=[broken, events.append]) as client:
        miss = await client.complete(**ask())
        await client.complete(**ask())
        await client.complete(**ask(temperature=0.5))
        async for _ in client.stream(**ask("streamed")):
            pass
        gateway.endpoint("a").fail(400)
        with pytest.raises(BadRequestError):
            await client.complete(**ask("rejected"))
    assert [e.cache for e in events] == [
        CacheStatus.MISS,
        CacheStatus.HIT,
        CacheStatus.BYPASS,
        CacheStatus.MISS,
        None,
    ]
    assert [e.stream for e in events] == [False, False, False, True, False]
    assert events[0].usage == miss.usage and events[0].endpoint == "a"
    assert miss.cost is not None
    assert events[0].cost_usd == miss.cost.usd > 0
    assert (events[1].cost_usd, events[1].saved_usd) == (0.0, miss.cost.usd)
    assert events[1].usage.prompt_tokens == 0  # a hit bills nothing
    assert events[4].error == "BadRequestError"
    assert all(e.seconds >= 0 for e in events)


async def test_prometheus_metrics(gateway: FakeGateway) -> None:
    registry = CollectorRegistry()
    async with client_for(gateway, on_event=PrometheusMetrics(registry)) as client:
        miss = await client.complete(**ask())
        await client.complete(**ask())
        gateway.endpoint("a").fail(400)
        with pytest.raises(BadRequestError):
            await client.complete(**ask("rejected"))
    sample = registry.get_sample_value
    assert sample("limpet_calls_total", {"model": MODEL, "cache": "miss", "endpoint": "a"}) == 1
    assert sample("limpet_calls_total", {"model": MODEL, "cache": "hit", "endpoint": "a"}) == 1
    assert sample("limpet_errors_total", {"model": MODEL, "error": "BadRequestError"}) == 1
    tokens = sample("limpet_tokens_total", {"model": MODEL, "kind": "prompt"})
    assert tokens == miss.usage.prompt_tokens
    assert miss.cost is not None
    assert sample("limpet_saved_usd_total", {"model": MODEL}) == pytest.approx(miss.cost.usd)
    assert sample("limpet_call_seconds_count", {"cache": "hit"}) == 1


async def test_prometheus_counts_what_an_answer_no_call_returned_cost(
    gateway: FakeGateway,
) -> None:
    """A stream whose only reader left once the upstream had sent it whole is stored and
    was paid for, but no call returned it: its dollars and tokens reached ``Stats`` and
    not Prometheus, which counted only the calls that returned. Both add up now."""
    registry = CollectorRegistry()
    upstream = gateway.endpoint("a")
    upstream.pause_stream(after_chunks=2)
    async with client_for(gateway, on_event=PrometheusMetrics(registry)) as client:
        flights = client._chat.streams
        assert flights is not None
        stream = client.stream(**ask("left"))
        await stream.__aenter__()
        await anext(stream)
        upstream.resume_stream()
        await asyncio.wait(flights.running)  # sent whole, accounted, stored
        await stream.aclose()  # its one reader leaves without it
        again = await client.complete(**ask("left"))
    sample = registry.get_sample_value
    assert again.cache is CacheStatus.HIT and client.stats.cost_usd > 0
    assert sample("limpet_cost_usd_total", {"model": MODEL}) == pytest.approx(client.stats.cost_usd)
    tokens = sample("limpet_tokens_total", {"model": MODEL, "kind": "prompt"})
    assert tokens == client.stats.prompt_tokens


async def test_prometheus_behind_a_function_of_yours_counts_what_calls_spent(
    gateway: FakeGateway,
) -> None:
    """Passed on by a wrapper (a filter, a fan-out), the metrics never hear each paid
    answer: tokens and dollars come from the events of the calls that returned, rather
    than from nowhere."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    async with client_for(gateway, on_event=[lambda event: metrics(event)]) as client:
        miss = await client.complete(**ask())
        await client.complete(**ask())
    assert miss.cost is not None
    sample = registry.get_sample_value
    assert sample("limpet_cost_usd_total", {"model": MODEL}) == pytest.approx(miss.cost.usd)
    prompt = sample("limpet_tokens_total", {"model": MODEL, "kind": "prompt"})
    assert prompt == miss.usage.prompt_tokens == client.stats.prompt_tokens


@pytest.mark.parametrize("also_direct", [False, True])
async def test_one_prometheus_hook_given_directly_and_wrapped_counts_each_once(
    gateway: FakeGateway, also_direct: bool
) -> None:
    """One PrometheusMetrics, given to one Client itself and to another behind a wrapper:
    the first tells it every paid answer, the second's events carry theirs; each is
    counted once (the wrapped Client's were lost once the other had told it any)."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    async with (
        client_for(gateway, on_event=metrics) as direct,
        client_for(
            gateway, on_event=[lambda event: metrics(event), *([metrics] * also_direct)]
        ) as wrapped,
    ):
        await direct.complete(**ask("one"))
        await wrapped.complete(**ask("two"))
        await wrapped.complete(**ask("three"))
    spent = direct.stats.cost_usd + wrapped.stats.cost_usd
    sample = registry.get_sample_value
    assert sample("limpet_cost_usd_total", {"model": MODEL}) == pytest.approx(spent)
    prompt = sample("limpet_tokens_total", {"model": MODEL, "kind": "prompt"})
    assert prompt == direct.stats.prompt_tokens + wrapped.stats.prompt_tokens


class Forwarding:
    """A hook that passes everything on to another (a fan-out, a filter, a proxy)."""

    def __init__(self, to: PrometheusMetrics) -> None:
        self.to = to

    def __call__(self, event: CallEvent) -> None:
        self.to(event)

    def limpet_spent(self, model: str, usage: Usage, cost: Cost | None) -> None:
        self.to.limpet_spent(model, usage, cost)


async def test_prometheus_behind_a_wrapper_that_passes_spend_on_counts_it_once(
    gateway: FakeGateway,
) -> None:
    """Told every paid answer through a wrapper, the metrics count each once: the events
    say which Client told them (they were counted twice when the events named the hook
    told, here the wrapper)."""
    registry = CollectorRegistry()
    async with client_for(gateway, on_event=Forwarding(PrometheusMetrics(registry))) as client:
        await client.complete(**ask())
        await client.complete(**ask("another"))
    sample = registry.get_sample_value
    assert sample("limpet_cost_usd_total", {"model": MODEL}) == pytest.approx(client.stats.cost_usd)
    prompt = sample("limpet_tokens_total", {"model": MODEL, "kind": "prompt"})
    assert prompt == client.stats.prompt_tokens


def test_a_prompt_cache_write_premium_is_counted_apart_and_the_call_still_observed() -> None:
    # A miss that wrote the provider's prompt cache saved less than nothing. Regression:
    # inc() of a negative raised in the hook, and the call's seconds were never observed.
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    usage = Usage(prompt_tokens=5000, completion_tokens=100, cache_write_tokens=4800)
    for saved in (-0.0036, 0.002):
        metrics(CallEvent(MODEL, CacheStatus.MISS, "a", usage, 0.02, saved, 0.5))
    sample = registry.get_sample_value
    assert sample("limpet_cache_write_premium_usd_total", {"model": MODEL}) == 0.0036
    assert sample("limpet_saved_usd_total", {"model": MODEL}) == 0.002
    assert sample("limpet_call_seconds_count", {"cache": "miss"}) == 2


async def test_two_prometheus_hooks_share_one_registry(gateway: FakeGateway) -> None:
    registry = CollectorRegistry()
    first, second = PrometheusMetrics(registry), PrometheusMetrics(registry)
    assert first.calls is second.calls
    async with (
        client_for(gateway, on_event=first) as a,
        client_for(gateway, on_event=second, namespace="b") as b,
    ):
        await a.complete(**ask())
        await b.complete(**ask())
    sample = registry.get_sample_value
    assert sample("limpet_calls_total", {"model": MODEL, "cache": "miss", "endpoint": "a"}) == 2
    other = PrometheusMetrics(registry, namespace="other")
    assert other.calls is not first.calls


async def test_opentelemetry_spans(gateway: FakeGateway) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = OpenTelemetrySpans(provider.get_tracer("test"))
    async with client_for(gateway, on_event=spans) as client:
        await client.complete(**ask())
        await client.complete(**ask())
        gateway.endpoint("a").fail(400)
        with pytest.raises(BadRequestError):
            await client.complete(**ask("rejected"))
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["limpet.complete"] * 3
    attributes = [dict(s.attributes or {}) for s in finished]
    assert [a["limpet.cache"] for a in attributes] == ["miss", "hit", "error"]
    assert attributes[0]["gen_ai.request.model"] == MODEL
    assert isinstance(attributes[0]["gen_ai.usage.input_tokens"], int)
    assert attributes[0]["gen_ai.usage.input_tokens"] > 0
    assert finished[2].status.status_code is StatusCode.ERROR
    assert all(s.start_time is not None and s.end_time is not None for s in finished)
    assert all((s.end_time or 0) >= (s.start_time or 0) for s in finished)
    provider.shutdown()


async def test_an_event_says_when_its_cost_is_unknown(gateway: FakeGateway) -> None:
    events: list[CallEvent] = []
    async with client_for(gateway, on_event=events.append) as client:
        await client.complete(**ask("priced"))
        gateway.endpoint("a").omit_usage()
        unknown = await client.complete(**ask("no usage"))
        await client.complete(**ask("no usage"))  # a hit of it: unknown too
    assert unknown.cost is None
    assert [e.priced for e in events] == [True, False, False]
    assert [e.cost_usd for e in events[1:]] == [0.0, 0.0]

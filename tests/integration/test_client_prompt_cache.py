"""Client(auto_cache_control=True) and Completion.cost against the FakeGateway's provider
prompt-cache simulation."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from typing import Any

import pytest

from limpet import CacheStatus, Client, Endpoint
from limpet.providers.pricing import ModelPrices, PriceTable, cost_usd, prompt_cache_savings
from limpet.providers.prompt_cache import FAMILIES, CacheControlConfig, CapabilityTable
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import ProviderPromptCache
from tests.integration.cancelling import flight_waiters
from tests.integration.chat import MODEL, ask

MANUAL = "Limpets cling to rocks with a muscular foot. " * 120

pytestmark = pytest.mark.gateway(prompt_cache=ProviderPromptCache)


def ask_the_manual(question: str) -> dict[str, Any]:
    """A question after the long system prompt the provider caches."""
    return ask(question, system=MANUAL, max_tokens=64)


def client_for(gateway: FakeGateway, **kwargs: Any) -> Client:
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"))], **kwargs)


async def test_marked_prefixes_are_read_from_the_provider_cache(gateway: FakeGateway) -> None:
    first_body, second_body = (
        ask_the_manual("What holds a limpet on?"),
        ask_the_manual("What do limpets eat?"),
    )
    before = copy.deepcopy(first_body)
    async with client_for(gateway, auto_cache_control=True) as client:
        first = await client.complete(**first_body)
        second = await client.complete(**second_body)
        again = await client.complete(**second_body)
    assert first_body == before  # the caller's request is never marked
    sent = gateway.endpoint("a").requests[0]
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_write_tokens > 1024 and first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == first.usage.cache_write_tokens
    assert first.cost is not None and second.cost is not None and again.cost is not None
    # A write costs a premium; a read saves 90% of the prefix's input price.
    assert first.cost.saved_usd == pytest.approx(-first.usage.cache_write_tokens * 0.75e-6)
    assert second.cost.saved_usd == pytest.approx(second.usage.cached_tokens * 2.7e-6)
    assert again.cache is CacheStatus.HIT
    assert (again.cost.usd, again.cost.saved_usd) == (0.0, second.cost.usd)
    stats = client.stats
    assert stats.cost_usd == pytest.approx(first.cost.usd + second.cost.usd)
    assert stats.saved_usd == pytest.approx(
        first.cost.saved_usd + second.cost.saved_usd + second.cost.usd
    )
    # Prices fetched once at most, not per call (the fetch runs beside the answers: the
    # gateway reports their cost, so none waits for it).
    assert gateway.endpoint("a").model_listings <= 1


async def test_a_waiter_that_takes_over_a_left_call_gets_its_prompt_cache_savings(
    gateway: FakeGateway,
) -> None:
    # Regression: the savings were noted on the leader's request; the waiter that took
    # its answer over (a miss, its own) showed saved_usd 0 for the same answer.
    upstream = gateway.endpoint("a")
    async with client_for(gateway, auto_cache_control=True) as client:
        await client.complete(**ask_the_manual("What holds a limpet on?"))  # writes the prefix
        upstream.hold_answers()
        body = ask_the_manual("What do limpets eat?")
        leader = asyncio.ensure_future(client.complete(**body))
        await upstream.wait_for_calls(2)
        waiter = asyncio.ensure_future(client.complete(**body))
        await flight_waiters(client, 2)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        upstream.release_answers()
        answer = await waiter
    assert answer.cache is CacheStatus.MISS and answer.usage.cached_tokens > 1024
    assert answer.cost is not None
    assert answer.cost.saved_usd == pytest.approx(answer.usage.cached_tokens * 2.7e-6)


async def test_an_endpoint_asking_for_automatic_caching_gets_no_injected_breakpoint(
    gateway: FakeGateway,
) -> None:
    # Regression: injection read the body alone; the endpoint's top-level cache_control
    # (OpenRouter's automatic caching), merged in as it is sent, made a caller's three
    # marks and the injected one five breakpoints, one more than Anthropic takes.
    mark = {"type": "ephemeral"}
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "parameters": {"type": "object"}},
         "cache_control": mark}
        for i in range(3)
    ]  # fmt: skip
    automatic = Endpoint("a", gateway.base_url("a"), extra_body={"cache_control": mark})
    async with Client(endpoints=[automatic], auto_cache_control=True) as client:
        await client.complete(**ask_the_manual("What holds a limpet on?"), tools=tools)
    sent = gateway.endpoint("a").requests[-1]
    assert sent["cache_control"] == mark
    assert isinstance(sent["messages"][0]["content"], str)  # the manual: not marked


async def test_the_key_does_not_depend_on_injection(gateway: FakeGateway) -> None:
    async with client_for(gateway, auto_cache_control=True) as marked:
        key = (await marked.complete(**ask_the_manual("q"))).key
    async with client_for(gateway) as plain:
        assert (await plain.complete(**ask_the_manual("q"))).key == key
    assert "cache_control" not in str(gateway.endpoint("a").requests[-1])


async def test_a_ttl_and_prices_can_be_configured(gateway: FakeGateway) -> None:
    prices = PriceTable(
        overrides={MODEL: ModelPrices.per_million(prompt=3, completion=15, cache_write_1h=6)}
    )
    config = CacheControlConfig(ttl="1h")
    async with client_for(gateway, auto_cache_control=config, prices=prices) as client:
        c = await client.complete(**ask_the_manual("q"))
    mark = gateway.endpoint("a").requests[0]["messages"][0]["content"][0]["cache_control"]
    assert mark == {"type": "ephemeral", "ttl": "1h"}
    assert c.cost is not None
    # OpenRouter reports one write total: every mark asked for 1 h, so every write is 1 h.
    assert c.usage.cache_write_1h_tokens == c.usage.cache_write_tokens > 1024
    assert c.cost.saved_usd == pytest.approx(-c.usage.cache_write_tokens * 3e-6)
    assert gateway.endpoint("a").model_listings == 0


async def test_without_injection_nothing_is_cached_for_anthropic(gateway: FakeGateway) -> None:
    async with client_for(gateway) as client:
        for q in ("one", "two"):
            c = await client.complete(**ask_the_manual(q))
            assert c.usage.cached_tokens == c.usage.cache_write_tokens == 0
            assert c.cost is not None and c.cost.saved_usd == 0.0
            prices = client.prices.get(MODEL)
            assert prices is not None
            assert c.cost.usd == pytest.approx(cost_usd(c.usage, prices), abs=1e-12)
            assert prompt_cache_savings(c.usage, prices) == 0.0


async def test_streams_are_marked_and_priced_like_completions(gateway: FakeGateway) -> None:
    async with client_for(gateway, auto_cache_control=True) as client:
        first = client.stream(**ask_the_manual("What holds a limpet on?"))
        async for _ in first:
            pass
        second = client.stream(**ask_the_manual("What do limpets eat?"))
        async for _ in second:
            pass
    sent = gateway.endpoint("a").requests[0]
    assert sent["stream"] is True
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.completion is not None and second.completion is not None
    assert first.completion.usage.cache_write_tokens > 1024
    assert second.completion.usage.cached_tokens == first.completion.usage.cache_write_tokens
    assert second.completion.cost is not None
    assert second.completion.cost.saved_usd == pytest.approx(
        second.completion.usage.cached_tokens * 2.7e-6
    )


async def test_a_1h_ttl_after_the_callers_5m_tool_mark_is_sent_as_the_provider_accepts(
    gateway: FakeGateway,
) -> None:
    # Regression: limpet marked the system prompt 1 h after the caller's 5 min mark on a
    # tool; Anthropic (and now the fake) answers that order with a 400.
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "Looks a limpet up."},
        "cache_control": {"type": "ephemeral"},
    }
    config = CacheControlConfig(ttl="1h")
    async with client_for(gateway, auto_cache_control=config) as client:
        first = await client.complete(**ask_the_manual("q"), tools=[tool])
        second = await client.complete(**ask_the_manual("q2"), tools=[tool])
    sent = gateway.endpoint("a").requests[0]
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_write_tokens > 1024 and first.usage.cache_write_1h_tokens == 0
    assert second.usage.cached_tokens == first.usage.cache_write_tokens


async def test_a_rolling_1h_mark_after_a_trailing_system_5m_mark_is_accepted(
    gateway: FakeGateway,
) -> None:
    # Regression: TTL order went by list index; the provider renders system messages
    # first, so the rolling 1 h mark on the last turn came after the caller's 5 min mark
    # on a trailing system message, and the call failed only because injection was on.
    body = ask_the_manual("How do I reset it?")
    body["messages"].append(
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
            ],
        }
    )
    config = CacheControlConfig(ttl="1h", rolling=True)
    async with client_for(gateway, auto_cache_control=config) as client:
        c = await client.complete(**body)
    sent = gateway.endpoint("a").requests[-1]["messages"]
    assert sent[0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert sent[1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert c.usage.cache_write_tokens > 1024  # the manual, written


async def test_a_ttl_the_family_does_not_offer_is_ordered_as_the_ttl_sent(
    gateway: FakeGateway,
) -> None:
    # Regression: a TTL the model's family does not offer was ordered as asked (an hour)
    # and sent as the provider's default (5 min), ahead of the caller's 1 h mark: a 400.
    five_minutes_only = replace(FAMILIES["anthropic"], ttls=("5m",))
    table = CapabilityTable.of({"anthropic/*": five_minutes_only, "acme/*": FAMILIES["anthropic"]})
    body = ask_the_manual("q")
    doc = {"type": "text", "text": "A long document. " * 300}
    body["messages"][1:1] = [
        {"role": "user", "content": [{**doc, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
        {"role": "assistant", "content": "Read."},
    ]
    config = CacheControlConfig(ttl="1h", capabilities=table)
    async with client_for(gateway, auto_cache_control=config) as client:
        c = await client.complete(**body)
    assert c.usage.cache_write_tokens > 1024


async def test_a_callers_ttl_with_a_unicode_digit_is_sent_as_given(gateway: FakeGateway) -> None:
    # Regression: "²m" passed str.isdigit(), and int() raised a bare ValueError out of
    # complete() before any request was sent. The caller's mark is its own to send.
    body = ask_the_manual("q")
    mark = {"type": "ephemeral", "ttl": "²m"}
    body["messages"][1] = {
        "role": "user",
        "content": [{"type": "text", "text": "q", "cache_control": mark}],
    }
    async with client_for(gateway, auto_cache_control=True) as client:
        await client.complete(**body)
    sent = gateway.endpoint("a").requests[-1]["messages"]
    assert sent[0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent[1]["content"][0]["cache_control"] == mark


@pytest.mark.parametrize("stream", [False, True])
async def test_an_endpoints_automatic_1h_caching_is_priced_as_1h_writes(
    gateway: FakeGateway, stream: bool
) -> None:
    # Regression: accounting read the body before the endpoint's extra_body was merged in
    # (by the transport), so its top-level 1 h cache_control went unseen and the writes
    # were priced at the 5 min rate: saved_usd (and usd, when the gateway reports none)
    # wrong, where the same field passed per call was priced right.
    automatic = {"cache_control": {"type": "ephemeral", "ttl": "1h"}}
    endpoint = Endpoint("a", gateway.base_url("a"), extra_body=automatic)
    async with Client(endpoints=[endpoint]) as client:
        if stream:
            answer = client.stream(**ask_the_manual("q"))
            async for _ in answer:
                pass
            c = answer.completion
        else:
            c = await client.complete(**ask_the_manual("q"))
        prices = client.prices.get(MODEL)
    assert gateway.endpoint("a").requests[-1]["cache_control"] == automatic["cache_control"]
    assert c is not None and c.cost is not None and prices is not None
    assert c.usage.cache_write_1h_tokens == c.usage.cache_write_tokens > 1024
    # A 1 h write costs 2x the input price, 3e-6 per token more than an uncached one.
    assert c.cost.saved_usd == pytest.approx(-c.usage.cache_write_tokens * 3e-6)
    # Priced by limpet, the usage costs what the gateway charged for it.
    assert cost_usd(c.usage, prices) == pytest.approx(c.raw["usage"]["cost"])


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_writes_of_marks_asking_for_both_ttls_are_priced_as_charged(
    gateway: FakeGateway, stream: bool
) -> None:
    # Regression: the gateway reports one total of writes; of marks asking for 1 h and
    # 5 min, every write was priced at the 5 min rate (saved_usd, and usd when the
    # gateway reports no cost, wrong). The charge tells the split.
    first, second = "Refund policy clause. " * 300, "Shipping policy clause. " * 300
    marked = [
        {"type": "text", "text": first, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": second, "cache_control": {"type": "ephemeral"}},
    ]
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": marked}, {"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 20,
    }
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        if stream:
            answer = client.stream(**request)
            async for _ in answer:
                pass
            c = answer.completion
        else:
            c = await client.complete(**request)
        prices = client.prices.get(MODEL)
    assert c is not None and c.cost is not None and prices is not None
    usage = c.usage
    assert 0 < usage.cache_write_1h_tokens < usage.cache_write_tokens
    charged = c.raw["usage"]["cost"]
    assert cost_usd(usage, prices) == pytest.approx(charged)
    plain = cost_usd(replace(usage, cache_write_tokens=0, cache_write_1h_tokens=0), prices)
    assert c.cost.saved_usd == pytest.approx(plain - charged)

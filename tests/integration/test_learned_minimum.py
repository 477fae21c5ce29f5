"""A minimum the capability table gets wrong is learned over loopback: a provider whose
real minimum for Sonnet 4.6 is 2,048 (orq.ai's figure; the table follows OpenRouter's
1,024) answers marked ~1,500-token prefixes with neither writes nor reads, and after
``DEFAULT_LEARN_AFTER`` such answers limpet stops marking them."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from limpet import CacheControlConfig, Client, Endpoint, RetryConfig
from limpet.providers.cache_minimums import (
    DEFAULT_LEARN_AFTER,
    LEARNED_MINIMUMS,
    LearnedMinimums,
)
from limpet.providers.prompt_cache import DEFAULT_CAPABILITIES, FAMILIES
from limpet.routing.sticky import StickyRouter
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import DEFAULT_CACHE_RULES, CacheRules, ProviderPromptCache
from tests.integration.chat import MODEL, ask
from tests.integration.scripted import completion
from tests.loopback import served

MANUAL = "Limpets cling to rocks with a muscular foot. " * 135  # ~1,500 tokens


def strict() -> ProviderPromptCache:
    rules = [("anthropic/claude-sonnet-4.6", CacheRules(kind="explicit", min_tokens=2048))]
    return ProviderPromptCache([*rules, *DEFAULT_CACHE_RULES])


def ask_the_manual(question: str, manual: str = MANUAL) -> dict[str, Any]:
    """A question after ``manual``, a system prompt long enough to cache."""
    return ask(question, system=manual, max_tokens=16)


def marked(body: dict[str, Any]) -> bool:
    content = body["messages"][0]["content"]
    return isinstance(content, list) and "cache_control" in content[-1]


async def test_silent_marked_prefixes_raise_the_minimum_after_the_stated_count() -> None:
    async with FakeGateway(endpoints=("a",), prompt_cache=strict) as gateway:
        router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
        async with Client(
            router=router, cache=None, auto_cache_control=True, retry=RetryConfig(max_attempts=1)
        ) as client:
            for i in range(DEFAULT_LEARN_AFTER + 2):
                completion = await client.complete(**ask_the_manual(f"question {i}"))
                assert completion.usage.cache_write_tokens == 0
            long_manual = MANUAL * 2  # ~3,000 tokens: above the learned minimum, caches
            written = await client.complete(**ask_the_manual("long", long_manual))
            stats = router.stats
        sent = gateway.endpoint("a").requests
    assert [marked(b) for b in sent[:-1]] == [True] * DEFAULT_LEARN_AFTER + [False, False]
    assert marked(sent[-1]) and written.usage.cache_write_tokens > 2048
    assert stats.learned_minimums == {MODEL: 2048}


async def test_a_client_with_a_table_of_its_own_learns_into_it_alone() -> None:
    # Regression: the router taught the process's LEARNED_MINIMUMS whatever table the
    # Client's CacheControlConfig named: the Client's own table never learned (so it kept
    # marking prefixes that cannot cache) and every other Client stopped marking them.
    mine = LearnedMinimums()
    control = CacheControlConfig(learned=mine)
    async with FakeGateway(endpoints=("a",), prompt_cache=strict) as gateway:
        endpoint = Endpoint("a", gateway.base_url("a"))
        router = StickyRouter([endpoint])
        async with Client(
            router=router, cache=None, auto_cache_control=control, retry=RetryConfig(max_attempts=1)
        ) as client:
            for i in range(DEFAULT_LEARN_AFTER + 1):
                silent = await client.complete(**ask_the_manual(f"question {i}"))
                assert silent.usage.reported and silent.usage.cache_write_tokens == 0
            assert router.stats.learned_minimums == {MODEL: 2048}
        async with Client(
            router=StickyRouter([endpoint]), cache=None, auto_cache_control=True
        ) as other:
            await other.complete(**ask_the_manual("another Client's question"))
        sent = gateway.endpoint("a").requests
    assert mine.snapshot() == {MODEL: 2048}
    assert LEARNED_MINIMUMS.snapshot() == {}
    # The Client stops marking once its table learned; the other Client never stopped.
    assert [marked(b) for b in sent] == [True] * DEFAULT_LEARN_AFTER + [False, True]


async def test_a_client_that_learns_nothing_keeps_marking_and_teaches_no_one() -> None:
    # Regression: CacheControlConfig(learned=None) learned into LEARNED_MINIMUMS all the
    # same, switching marking off for every other Client of the process.
    control = CacheControlConfig(learned=None)
    async with FakeGateway(endpoints=("a",), prompt_cache=strict) as gateway:
        router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
        async with Client(
            router=router, cache=None, auto_cache_control=control, retry=RetryConfig(max_attempts=1)
        ) as client:
            for i in range(DEFAULT_LEARN_AFTER + 2):
                silent = await client.complete(**ask_the_manual(f"question {i}"))
                assert silent.usage.reported and silent.usage.cache_write_tokens == 0
            assert router.stats.learned_minimums == {}
        sent = gateway.endpoint("a").requests
    assert LEARNED_MINIMUMS.snapshot() == {}
    assert all(marked(b) for b in sent)


async def test_a_client_learns_by_its_own_capability_table() -> None:
    # Regression: learning looked models up in the built-in table, not the one the
    # Client marks by: a model only the Client's table lists was marked on every call
    # and never learned, however often its provider answered that nothing cached.
    model = "acme/limpet-large"  # a model the built-in table does not know
    assert DEFAULT_CAPABILITIES.lookup(model) is None
    mine = LearnedMinimums()
    control = CacheControlConfig(
        capabilities=DEFAULT_CAPABILITIES.with_overrides({model: FAMILIES["anthropic"]}),
        learned=mine,
    )

    def provider() -> ProviderPromptCache:
        return ProviderPromptCache([(model, CacheRules(kind="explicit", min_tokens=2048))])

    async with FakeGateway(endpoints=("a",), prompt_cache=provider) as gateway:
        router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
        async with Client(
            router=router, cache=None, auto_cache_control=control, retry=RetryConfig(max_attempts=1)
        ) as client:
            for i in range(DEFAULT_LEARN_AFTER + 2):
                body = {**ask_the_manual(f"question {i}"), "model": model}
                silent = await client.complete(**body)
                assert silent.usage.reported and silent.usage.cache_write_tokens == 0
        sent = gateway.endpoint("a").requests
    assert mine.snapshot() == {model: 2048}
    assert LEARNED_MINIMUMS.snapshot() == {}
    assert [marked(b) for b in sent] == [True] * DEFAULT_LEARN_AFTER + [False, False]


async def test_a_prefix_that_caches_teaches_nothing() -> None:
    async with FakeGateway(endpoints=("a",), prompt_cache=ProviderPromptCache) as gateway:
        router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
        async with Client(router=router, cache=None, auto_cache_control=True) as client:
            for i in range(DEFAULT_LEARN_AFTER + 2):
                await client.complete(**ask_the_manual(f"question {i}"))
            assert router.stats.learned_minimums == {}
        assert all(marked(b) for b in gateway.endpoint("a").requests)


async def test_answers_without_usage_teach_nothing_and_marking_goes_on() -> None:
    # Regression: answers that left usage out read as "the marked prefix did not cache";
    # DEFAULT_LEARN_AFTER of them switched marking off for the model, process-wide.
    async with FakeGateway(endpoints=("a",), prompt_cache=ProviderPromptCache) as gateway:
        router = StickyRouter([Endpoint("a", gateway.base_url("a"))])
        async with Client(
            router=router, cache=None, auto_cache_control=True, retry=RetryConfig(max_attempts=1)
        ) as client:
            gateway.endpoint("a").omit_usage(times=DEFAULT_LEARN_AFTER + 1)
            for i in range(DEFAULT_LEARN_AFTER + 1):
                silent = await client.complete(**ask_the_manual(f"question {i}"))
                assert not silent.usage.reported
            after = await client.complete(**ask_the_manual("after"))
            assert router.stats.learned_minimums == {}
        sent = gateway.endpoint("a").requests
    assert all(marked(b) for b in sent)
    assert after.usage.cached_tokens > 1024


async def test_a_callers_own_marks_teach_nothing_for_the_others() -> None:
    # Regression: one caller (through `limpet serve`, any caller) marked a short system
    # message after a long user one: the provider renders system messages first, so
    # nothing cached, and limpet learned that no prefix under ~7,000 tokens caches, for
    # every Client of the process: the others' prefixes were never marked again.
    long_question = "x" * 28_000  # ~7,000 tokens
    own = {
        **ask(long_question, max_tokens=16),
        "messages": [
            {"role": "user", "content": long_question},
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
    }
    async with FakeGateway(endpoints=("a",), prompt_cache=ProviderPromptCache) as gateway:
        endpoint = Endpoint("a", gateway.base_url("a"))
        async with Client(router=StickyRouter([endpoint]), cache=None) as caller:
            for _ in range(DEFAULT_LEARN_AFTER + 2):
                silent = await caller.complete(**own)
                assert silent.usage.cache_write_tokens == silent.usage.cached_tokens == 0
        router = StickyRouter([endpoint])
        async with Client(router=router, cache=None, auto_cache_control=True) as other:
            written = await other.complete(**ask_the_manual("another caller's question"))
            assert router.stats.learned_minimums == {}
        assert marked(gateway.endpoint("a").requests[-1])
    assert written.usage.cache_write_tokens > 1024


async def test_a_fallback_models_silence_teaches_the_requested_model_nothing() -> None:
    # Regression (adversarial review): an OpenRouter `models` fallback answered by another
    # model, which reports no Anthropic cache use, was counted against the model asked
    # for: a few raised its minimum process-wide and switched its marking off.
    sent: list[dict[str, Any]] = []

    async def fallback(request: web.Request) -> web.Response:
        sent.append(await request.json())
        usage = {"prompt_tokens": 1500, "completion_tokens": 1, "total_tokens": 1501,
                 "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
        return web.json_response({**completion(), "model": "openai/gpt-4o-mini", "usage": usage})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", fallback)
    async with served(app) as url:
        router = StickyRouter([Endpoint("a", f"{url}/v1")])
        async with Client(
            router=router, cache=None, auto_cache_control=True, retry=RetryConfig(max_attempts=1)
        ) as client:
            for i in range(DEFAULT_LEARN_AFTER + 2):
                body = {**ask_the_manual(f"question {i}"), "models": [MODEL, "openai/gpt-4o-mini"]}
                assert (await client.complete(**body)).model == "openai/gpt-4o-mini"
            assert router.stats.learned_minimums == {}
    assert all(marked(b) for b in sent)

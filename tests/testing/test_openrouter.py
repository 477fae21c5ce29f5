"""OpenRouterProviders: the FakeGateway's OpenRouter-like mode routes as OpenRouter documents.

Unit tests drive ``account`` directly with an explicit clock; one test goes over loopback
to check that the response names the provider that served.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
import pytest

from limpet.testing import FakeGateway, OpenRouterProviders, count_prompt_tokens
from limpet.testing.openrouter import DEFAULT_STICKY_TTL

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}
DOC = "The handbook explains every procedure in detail. " * 500  # ~6k tokens


def rag(question: str, doc: str = DOC, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Answer from the document."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": doc, "cache_control": CC},
                    {"type": "text", "text": question},
                ],
            },
        ],
        "temperature": 0,
        **fields,
    }


def chat(turns: int, **fields: Any) -> dict[str, Any]:
    """One conversation's request after ``turns`` turns: its first two messages never change."""
    history: list[dict[str, Any]] = []
    for turn in range(turns):
        history += [{"role": "user", "content": f"q{turn}"}, {"role": "assistant", "content": "a"}]
    body = rag("first question", **fields)
    body["messages"] += [*history, {"role": "user", "content": "next?"}]
    return body


def account(providers: OpenRouterProviders, body: dict[str, Any], now: float) -> Any:
    return providers.account(MODEL, body, count_prompt_tokens(body), now=now)


def test_without_a_session_each_question_is_drawn_by_weight() -> None:
    providers = OpenRouterProviders({"a": 1.0, "b": 1.0, "c": 2.0}, seed=3)
    served = Counter(account(providers, rag(f"q{i}"), now=float(i)).provider for i in range(800))
    assert set(served) == {"a", "b", "c"}
    assert 0.4 < served["c"] / 800 < 0.6
    assert served == providers.served


def test_a_session_id_is_sticky_from_the_first_request_until_idle() -> None:
    providers = OpenRouterProviders(seed=1)
    first = account(providers, rag("q0", session_id="s1"), now=0.0)
    assert first.cache_write_tokens > 0 and first.provider is not None
    later = [account(providers, rag(f"q{i}", session_id="s1"), now=i * 240.0) for i in range(1, 9)]
    assert {r.provider for r in later} == {first.provider}
    assert all(r.cached_tokens > 0 for r in later)
    # Idle past the sticky TTL: the choice is drawn again (from several, some other).
    choices = {
        account(
            providers, rag("q", session_id="s1"), now=10_000.0 + k * 2 * DEFAULT_STICKY_TTL
        ).provider
        for k in range(12)
    }
    assert len(choices) > 1


def test_a_conversation_turns_sticky_only_after_a_request_that_used_the_cache() -> None:
    providers = OpenRouterProviders(seed=2)
    uncached = chat(0)
    uncached["messages"][1]["content"][0].pop("cache_control")  # nothing marked: no caching
    drawn = {account(providers, uncached, now=float(i)).provider for i in range(12)}
    assert len(drawn) > 1  # never sticky: no request used the cache
    opened = account(providers, chat(0), now=100.0)
    assert opened.cache_write_tokens > 0
    turns = [account(providers, chat(t), now=100.0 + t) for t in range(1, 8)]
    assert {r.provider for r in turns} == {opened.provider}


def test_different_rag_questions_are_different_conversations() -> None:
    providers = OpenRouterProviders(seed=5)
    served = {account(providers, rag(f"q{i}"), now=float(i)).provider for i in range(12)}
    assert len(served) == 3


def test_a_provider_order_pins_and_a_down_provider_is_passed_over() -> None:
    providers = OpenRouterProviders(seed=4)
    pinned = rag("q", provider={"order": ["amazon-bedrock", "anthropic"]})
    assert account(providers, pinned, now=0.0).provider == "amazon-bedrock"
    providers.down.add("amazon-bedrock")
    assert account(providers, pinned, now=1.0).provider == "anthropic"
    sticky = account(providers, rag("q", session_id="s"), now=2.0).provider
    providers.down.add(sticky)
    assert account(providers, rag("q", session_id="s"), now=3.0).provider != sticky
    providers.reset()
    assert not providers.served


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        OpenRouterProviders({"a": 0.0})


async def test_the_response_names_the_provider_that_served() -> None:
    async with FakeGateway(endpoints=("or",), prompt_cache=OpenRouterProviders) as gateway:
        providers = gateway.endpoint("or").prompt_cache
        assert isinstance(providers, OpenRouterProviders)
        url = f"{gateway.base_url('or')}/chat/completions"
        async with aiohttp.ClientSession() as session:
            names = []
            for i in range(3):
                async with session.post(url, json=rag(f"q{i}", session_id="s")) as response:
                    answer = await response.json()
                names.append(answer["provider"])
                usage = answer["usage"]["prompt_tokens_details"]
                assert (usage["cached_tokens"] > 0) == (i > 0)
        assert len(set(names)) == 1 and names[0] in providers.caches
        assert providers.served == {names[0]: 3}

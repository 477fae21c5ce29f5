"""Sticky keys for upstream routers: ``session_id`` eligibility, ``prompt_cache_key`` spread
for measured hot prefixes, and the single-endpoint fast path. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from limpet.config import Endpoint, RoutingConfig
from limpet.errors import ConfigurationError
from limpet.routing.sticky import StickyRouter
from limpet.routing.sticky_keys import PromptCacheKeys, session_id_for, wants_session_id
from tests.fakes import FakeClock

OPENAI = "openai/gpt-5-mini"
ANTHROPIC = "anthropic/claude-sonnet-4.6"
KEY = "0123456789abcdef" * 2


def body(model: str = OPENAI, prompt: str = "a long shared prompt") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": prompt},
                                         {"role": "user", "content": "hi"}]}  # fmt: skip


def test_the_gateway_is_inferred_from_an_openrouter_url_and_set_by_the_constructor() -> None:
    assert Endpoint("a", "https://openrouter.ai/api/v1").gateway == "openrouter"
    assert Endpoint("a", "https://eu.openrouter.ai/api/v1").gateway == "openrouter"
    assert Endpoint("a", "https://openrouter.ai.evil.test/v1").gateway is None
    assert Endpoint("a", "http://127.0.0.1:9/x/v1").gateway is None
    assert Endpoint("a", "http://127.0.0.1:9/x/v1", gateway="openrouter").gateway == "openrouter"
    pinned = Endpoint.openrouter("anthropic", base_url="http://relay.test/v1")
    assert pinned.gateway == "openrouter" and pinned.pinned
    with pytest.raises(ConfigurationError, match=r"Endpoint\.gateway"):
        Endpoint("a", "http://x.test", gateway="litellm")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"RoutingConfig\.session_id"):
        RoutingConfig(session_id="yes")  # type: ignore[arg-type]


def test_session_id_needs_an_unpinned_openrouter_endpoint_and_no_caller_id() -> None:
    config = RoutingConfig()
    free = Endpoint("or", "https://openrouter.ai/api/v1")
    assert wants_session_id(free, body(), config)
    assert not wants_session_id(free, {**body(), "session_id": "mine"}, config)
    assert not wants_session_id(free, {**body(), "provider": {"only": ["azure"]}}, config)
    assert not wants_session_id(free, body(), RoutingConfig(session_id=False))
    header = Endpoint("or", "https://openrouter.ai/api/v1", headers={"X-Session-Id": "s"})
    assert not wants_session_id(header, body(), config)
    own = Endpoint("or", "https://openrouter.ai/api/v1", extra_body={"session_id": "app"})
    assert not wants_session_id(own, body(), config)
    sorted_only = Endpoint("or", "https://openrouter.ai/api/v1", extra_body={"provider": {}})
    assert wants_session_id(sorted_only, body(), config)


def test_one_plain_endpoint_routes_without_a_prefix_chain() -> None:
    router = StickyRouter([Endpoint("a", "http://gateway.test")])
    route = router.select(body(ANTHROPIC))
    assert route.key is None and route.chain is None and route.reason == "spread"
    keyed = StickyRouter([Endpoint("or", "https://openrouter.ai/api/v1")]).select(body(ANTHROPIC))
    assert keyed.key is not None and keyed.body["session_id"] == session_id_for(keyed.key.key or "")


def test_a_cool_prefix_keeps_one_prompt_cache_key() -> None:
    keys = PromptCacheKeys(per_key_rate=15.0)
    seen = {keys.key_for(KEY, now=60.0 + i * 4.1) for i in range(100)}  # ~14.6 a minute
    assert seen == {session_id_for(KEY)}


def test_a_hot_prefix_is_spread_over_one_key_per_fifteen_requests_a_minute() -> None:
    keys = PromptCacheKeys(per_key_rate=15.0)
    # 60 a minute, for five minutes: once measured, four keys, used in turn.
    sent = [keys.key_for(KEY, now=60.0 + i) for i in range(300)]
    steady = sent[120:]
    assert len(set(steady)) == 4
    assert session_id_for(KEY) in steady
    assert max(steady.count(k) for k in set(steady)) == len(steady) // 4
    # Cooling down again: back to the one key.
    later = [keys.key_for(KEY, now=1_000.0 + i * 10) for i in range(30)]
    assert set(later[12:]) == {session_id_for(KEY)}


def test_the_router_derives_a_spread_prompt_cache_key_for_openai_models_only() -> None:
    clock = FakeClock(6_000.0)
    router = StickyRouter(
        [Endpoint("a", "http://gateway.test")],
        config=RoutingConfig(prompt_cache_key=True),
        clock=clock,
    )
    keys = set()
    for i in range(120):
        clock.now = 6_000.0 + i * 0.5  # 120 a minute
        keys.add(router.select(body()).body["prompt_cache_key"])
    assert 2 <= len(keys) <= 8
    assert "prompt_cache_key" not in router.select(body(ANTHROPIC)).body

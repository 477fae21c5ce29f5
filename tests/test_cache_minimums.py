"""LearnedMinimums and the capability table's sources. Pure."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.models import Usage
from limpet.providers.cache_minimums import (
    DEFAULT_LEARN_AFTER,
    LEARNED_MINIMUMS,
    LearnedMinimums,
)
from limpet.providers.prompt_cache import (
    DEFAULT_CAPABILITIES,
    CacheControlConfig,
    inject_cache_control,
    marked_prefix_tokens,
)
from limpet.routing.feedback import learn_minimum

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}


def test_the_table_gives_published_minimums_with_their_sources() -> None:
    minimums = {
        "anthropic/claude-opus-4.5": 4096,
        "anthropic/claude-opus-4.6": 4096,
        "anthropic/claude-opus-4.7": 4096,
        "anthropic/claude-opus-4.8:nitro": 4096,
        "anthropic/claude-haiku-4.5": 4096,
        "anthropic/claude-sonnet-4.6": 1024,
        "anthropic/claude-sonnet-4.5": 1024,
        "anthropic/claude-opus-4.1": 1024,
        "anthropic/claude-3.5-haiku": 2048,
    }
    for model, minimum in minimums.items():
        capability = DEFAULT_CAPABILITIES.lookup(model)
        assert capability is not None and capability.min_tokens == minimum, model
        assert "2026" in capability.source, model
    sonnet = DEFAULT_CAPABILITIES.lookup(MODEL)
    assert sonnet is not None and "disagree" in sonnet.source and "2,048" in sonnet.source


def test_silence_above_the_minimum_raises_it_after_the_stated_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    learned = LearnedMinimums(after=3)
    with caplog.at_level(logging.WARNING, logger="limpet.prompt_cache"):
        assert learned.observe(MODEL, 1500, 1024, cached=False) is None
        assert learned.observe(MODEL, 900, 1024, cached=False) is None  # below: not counted
        assert learned.observe(MODEL, 1700, 1024, cached=False) is None
        assert learned.minimum(MODEL) == 0
        assert learned.observe(MODEL, 1600, 1024, cached=False) == 2048
    assert learned.minimum(MODEL) == 2048 and learned.snapshot() == {MODEL: 2048}
    assert len(caplog.records) == 1 and "2048" in caplog.records[0].getMessage()
    # Silence below the learned minimum now counts for nothing.
    for _ in range(5):
        assert learned.observe(MODEL, 1900, 1024, cached=False) is None
    assert learned.minimum(MODEL) == 2048


def test_silence_at_a_size_seen_caching_does_not_count() -> None:
    learned = LearnedMinimums(after=2)
    learned.observe(MODEL, 3000, 1024, cached=True)
    for _ in range(4):
        assert learned.observe(MODEL, 5000, 1024, cached=False) is None
    learned.observe(MODEL, 2500, 1024, cached=False)
    assert learned.observe(MODEL, 2600, 1024, cached=False) == 3000  # capped at the cached
    assert learned.minimum(MODEL) == 3000


@given(
    st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 8192), st.booleans()), max_size=60)
)
def test_a_learned_minimum_never_falls_and_never_passes_the_ceiling(
    events: list[tuple[int, int, bool]],
) -> None:
    learned = LearnedMinimums(after=2, ceiling=8192)
    before = 0
    for tokens, table, cached in events:
        raised = learned.observe(MODEL, tokens, table, cached=cached)
        now = learned.minimum(MODEL)
        assert now >= before and now <= 8192
        assert raised is None or (raised == now and raised > max(table, before))
        before = now


def test_injection_follows_a_learned_minimum_and_can_ignore_it() -> None:
    body = {"model": MODEL, "messages": [{"role": "system", "content": "x" * 6000},
                                         {"role": "user", "content": "q"}]}  # fmt: skip
    learned = LearnedMinimums()
    config = CacheControlConfig(learned=learned)
    assert inject_cache_control(body, config) is not body  # ~1,500 tokens >= 1,024
    for tokens in (1500, 1600, 1700):
        learned.observe(MODEL, tokens, 1024, cached=False)
    assert learned.minimum(MODEL) == 2048
    assert inject_cache_control(body, config) is body
    assert inject_cache_control(body, CacheControlConfig(learned=None)) is not body


def test_marked_prefix_tokens_count_up_to_the_deepest_mark() -> None:
    doc = {"type": "text", "text": "d" * 4000, "cache_control": CC}
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "s" * 400, "cache_control": CC}],
            },
            {"role": "user", "content": [doc, {"type": "text", "text": "q" * 4000}]},
        ],
    }
    assert marked_prefix_tokens(body) == (4 + 100) + (4 + 1000)
    assert (
        marked_prefix_tokens({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        is None
    )


@pytest.mark.parametrize(
    "usage",
    [Usage(reported=False), Usage(0, 0, reported=True)],
    ids=["no-usage", "response-cache-hit"],
)
def test_an_answer_that_counted_no_prompt_teaches_no_minimum(usage: Usage) -> None:
    # Regression: an answer without usage (or OpenRouter's response-cache hit, usage 0)
    # read as "the marked prefix did not cache": a few switched marking off for the model.
    marked = {
        "model": MODEL,
        "messages": [{"role": "system", "content": [{"type": "text", "text": "x" * 6000,
                                                     "cache_control": CC}]}],
    }  # fmt: skip
    for _ in range(DEFAULT_LEARN_AFTER + 1):
        learn_minimum(LEARNED_MINIMUMS, marked, usage)
    assert LEARNED_MINIMUMS.snapshot() == {}
    # The same answers counting a prompt that did not cache do teach it.
    for _ in range(DEFAULT_LEARN_AFTER):
        learn_minimum(LEARNED_MINIMUMS, marked, Usage(1500, 1))
    assert LEARNED_MINIMUMS.minimum(MODEL) == 2048


@pytest.mark.parametrize(
    ("answered", "learns"),
    [(None, True), (MODEL, True), ("Anthropic/Claude-Sonnet-4.6:nitro", True),
     ("openai/gpt-4o-mini", False), ("anthropic/claude-sonnet-4.5", False), (42, False)],
    ids=["unnamed", "same", "variant", "fallback", "sibling", "not-a-name"],
)  # fmt: skip
def test_only_the_requested_models_silence_teaches_its_minimum(
    answered: object, learns: bool
) -> None:
    # Regression (adversarial review): an OpenRouter `models` fallback's silence raised the
    # minimum of the model asked for.
    marked = {
        "model": MODEL,
        "messages": [{"role": "system", "content": [{"type": "text", "text": "x" * 6000,
                                                     "cache_control": CC}]}],
    }  # fmt: skip
    for _ in range(DEFAULT_LEARN_AFTER):
        learn_minimum(LEARNED_MINIMUMS, marked, Usage(1500, 1), answered)
    assert LEARNED_MINIMUMS.snapshot() == ({MODEL: 2048} if learns else {})

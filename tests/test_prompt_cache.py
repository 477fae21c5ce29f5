"""cache_control injection and the capability table: pure, no event loop."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.errors import ConfigurationError
from limpet.pipeline.keys import canonical_request
from limpet.providers.prompt_cache import (
    DEFAULT_CAPABILITIES,
    FAMILIES,
    CacheCapability,
    CacheControlConfig,
    CapabilityTable,
    breakpoint_ttl,
    count_breakpoints,
    estimate_tokens,
    inject_cache_control,
    model_slug,
)
from limpet.providers.prompt_cache.injection import ttl_between
from limpet.testing.provider_cache import PromptCacheRefusal, ProviderPromptCache
from limpet.testing.tokens import count_prompt_tokens

SONNET = "anthropic/claude-sonnet-4.6"
EPHEMERAL = {"type": "ephemeral"}
# 4 chars per token: a system message of n tokens is 4 overhead + the content's tokens.
LONG = "All work and no play makes a long prompt. " * 200  # 8,400 chars: ~2,100 tokens
SHORT = "x" * 4000  # 1,000 tokens, under Sonnet's 1,024 with the message overhead


def chat(system: Any = LONG, *turns: str, model: str = SONNET, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    roles = ("user", "assistant")
    messages.extend({"role": roles[i % 2], "content": t} for i, t in enumerate(turns or ("hi",)))
    return {"model": model, "messages": messages, "temperature": 0, **extra}


def test_a_long_system_prompt_is_marked_and_turned_into_a_text_block() -> None:
    body = chat()
    sent = inject_cache_control(body)
    assert sent is not body
    assert sent["messages"][0] == {
        "role": "system",
        "content": [{"type": "text", "text": LONG, "cache_control": EPHEMERAL}],
    }
    assert sent["messages"][1] is body["messages"][1]  # unchanged messages are shared
    assert count_breakpoints(sent) == 1


def test_below_the_minimum_nothing_is_marked() -> None:
    body = chat(SHORT)
    assert estimate_tokens(body["messages"][0]) == 1004
    assert inject_cache_control(body) is body


def test_the_minimum_is_the_models() -> None:
    medium = "y" * 12_000  # 3,004 tokens: over Sonnet's 1,024, under Haiku 4.5's 4,096
    assert inject_cache_control(chat(medium)) != chat(medium)
    haiku = chat(medium, model="anthropic/claude-haiku-4.5")
    assert inject_cache_control(haiku) is haiku


def test_tools_count_towards_the_static_prefix() -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 2400}}]
    half = "z" * 2000  # 504 tokens of system: too short alone, long enough with the tools
    assert inject_cache_control(chat(half)) == chat(half)
    sent = inject_cache_control(chat(half, tools=tools))
    assert sent["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    assert sent["tools"] is tools


def test_the_callers_request_is_never_modified() -> None:
    blocks = [{"type": "text", "text": "Intro."}, {"type": "text", "text": LONG}]
    body = chat(blocks, "first question", "an answer", "second question")
    before = copy.deepcopy(body)
    sent = inject_cache_control(body, CacheControlConfig(rolling=True, ttl="1h"))
    assert body == before
    assert sent["messages"][0]["content"][0] is blocks[0]
    assert "cache_control" not in blocks[1]
    assert sent["messages"][0]["content"][1] == {
        "type": "text",
        "text": LONG,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }


def test_the_cache_key_is_computed_on_the_callers_request() -> None:
    # The Client keys the caller's body and injects only into what it sends, so the key
    # is the same with auto_cache_control on or off.
    body = chat()
    key_before = canonical_request(body)
    sent = inject_cache_control(body)
    assert canonical_request(body) == key_before
    assert canonical_request(sent) != key_before


def test_a_block_the_caller_marked_is_not_marked_again() -> None:
    mine = {"type": "ephemeral", "ttl": "1h"}
    body = chat([{"type": "text", "text": LONG, "cache_control": mine}])
    assert inject_cache_control(body) is body


def test_the_caller_marks_elsewhere_count_towards_the_limit() -> None:
    turns = [[{"type": "text", "text": f"turn {i}", "cache_control": EPHEMERAL}] for i in range(3)]
    body = chat(LONG, "q")
    body["messages"][1:1] = [{"role": "user", "content": t} for t in turns]
    sent = inject_cache_control(body, CacheControlConfig(rolling=True))
    # Three of the caller's, one left: the system prompt gets it, the rolling one does not.
    assert count_breakpoints(sent) == 4
    assert sent["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    assert sent["messages"][-1]["content"] == "q"


@pytest.mark.parametrize("callers", [0, 1, 2, 3, 4, 5])
def test_never_more_than_four_breakpoints(callers: int) -> None:
    body = chat(LONG, "q1", "a1", "q2")
    body["tools"] = [
        {"type": "function", "function": {"name": f"t{i}"}, "cache_control": EPHEMERAL}
        for i in range(callers)
    ]
    sent = inject_cache_control(body, CacheControlConfig(rolling=True))
    assert count_breakpoints(sent) == max(min(callers + 2, 4), callers)
    if callers >= 4:
        assert sent is body


def test_rolling_marks_the_last_user_turn() -> None:
    body = chat(LONG, "q1", "a1", "q2")
    sent = inject_cache_control(body, CacheControlConfig(rolling=True))
    assert sent["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    assert sent["messages"][3]["content"] == [
        {"type": "text", "text": "q2", "cache_control": EPHEMERAL}
    ]
    assert sent["messages"][1] is body["messages"][1]
    assert inject_cache_control(body)["messages"][3] is body["messages"][3]  # off by default


def test_rolling_without_a_system_prompt_needs_a_long_enough_conversation() -> None:
    short = chat(None, "q1", "a1", "q2")
    assert inject_cache_control(short, CacheControlConfig(rolling=True)) is short
    long = chat(None, LONG, "a1", "q2")
    sent = inject_cache_control(long, CacheControlConfig(rolling=True))
    assert count_breakpoints(sent) == 1
    assert sent["messages"][2]["content"][0]["cache_control"] == EPHEMERAL


@pytest.mark.parametrize(
    "model", ["openai/gpt-5-mini", "deepseek/deepseek-chat", "x-ai/grok-4", "acme/unknown"]
)
def test_automatic_and_unknown_models_are_left_alone(model: str) -> None:
    body = chat(model=model)
    assert inject_cache_control(body) is body


def test_openrouter_automatic_caching_is_left_to_openrouter() -> None:
    body = chat(cache_control=EPHEMERAL)
    assert inject_cache_control(body) is body


def test_gemini_gets_one_breakpoint_and_only_when_the_caller_set_none() -> None:
    body = chat(LONG, "q1", "a1", "q2", model="google/gemini-2.5-flash")
    sent = inject_cache_control(body, CacheControlConfig(rolling=True, ttl="1h"))
    assert count_breakpoints(sent) == 1
    # Gemini's breakpoint takes no TTL: the provider's own applies.
    assert sent["messages"][0]["content"][0]["cache_control"] == EPHEMERAL
    body["messages"][3] = {
        "role": "user",
        "content": [{"type": "text", "text": "q2", "cache_control": EPHEMERAL}],
    }
    assert inject_cache_control(body) is body


@pytest.mark.parametrize("ttl", ["5m", "1h"])
def test_the_configured_ttl(ttl: str) -> None:
    sent = inject_cache_control(chat(), CacheControlConfig(ttl=ttl))
    mark = sent["messages"][0]["content"][0]["cache_control"]
    assert mark == (EPHEMERAL if ttl == "5m" else {"type": "ephemeral", "ttl": "1h"})


def _sent_ttls(sent: dict[str, Any]) -> list[str | None]:
    """The TTL of every mark, in Anthropic's order (tools, then messages)."""
    marks = [t["cache_control"] for t in sent.get("tools", ()) if "cache_control" in t]
    for message in sent["messages"]:
        content = message["content"]
        parts = content if isinstance(content, list) else []
        marks.extend(p["cache_control"] for p in parts if "cache_control" in p)
    return [mark.get("ttl") for mark in marks]


def _marked_turn(text: str, ttl: str | None = None) -> dict[str, Any]:
    mark = EPHEMERAL if ttl is None else {**EPHEMERAL, "ttl": ttl}
    return {"role": "user", "content": [{"type": "text", "text": text, "cache_control": mark}]}


def _accepted_by_the_fake(sent: dict[str, Any]) -> None:
    ProviderPromptCache().account(SONNET, sent, count_prompt_tokens(sent), now=0.0)


TOOL = {"type": "function", "function": {"name": "f", "description": "d"}}


@pytest.mark.parametrize("callers_ttl", [None, "5m"])
def test_a_1h_breakpoint_never_follows_a_5m_one(callers_ttl: str | None) -> None:
    # Regression: with ttl="1h", the system prompt was marked 1 h after the caller's
    # 5 min mark on a tool; Anthropic refuses that order with a 400.
    mark = EPHEMERAL if callers_ttl is None else {**EPHEMERAL, "ttl": callers_ttl}
    body = chat(tools=[{**TOOL, "cache_control": mark}])
    sent = inject_cache_control(body, CacheControlConfig(ttl="1h"))
    assert sent is not body
    assert _sent_ttls(sent) == [callers_ttl, None]  # the system mark: 5 min
    _accepted_by_the_fake(sent)


def test_a_5m_breakpoint_never_precedes_a_1h_one() -> None:
    # The caller's later 1 h mark writes the system prompt at 1 h anyway: marking it 1 h
    # too costs nothing more, where 5 min would be refused.
    body = chat(LONG, "hi")
    body["messages"].append(_marked_turn("doc", "1h"))
    sent = inject_cache_control(body)
    assert _sent_ttls(sent) == ["1h", "1h"]
    _accepted_by_the_fake(sent)


def test_the_rolling_mark_after_a_callers_5m_mark_asks_for_5m() -> None:
    body = chat(LONG, "first", "answer", "second")
    body["messages"][1] = _marked_turn("first")
    sent = inject_cache_control(body, CacheControlConfig(ttl="1h", rolling=True))
    assert _sent_ttls(sent) == ["1h", None, None]  # system before it: 1 h; last turn: 5 min
    _accepted_by_the_fake(sent)


def test_a_trailing_system_messages_5m_mark_counts_as_before_the_turns() -> None:
    # Regression: TTL order went by list index, but providers render every system
    # message before the turns: the rolling 1 h mark on the last turn followed the
    # caller's 5 min mark on a trailing system message, and Anthropic answered 400.
    body = chat(LONG, "first " * 200, "answer", "second")
    body["messages"].append(
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}],
        }
    )
    sent = inject_cache_control(body, CacheControlConfig(ttl="1h", rolling=True))
    assert sent["messages"][0]["content"][0]["cache_control"] == {**EPHEMERAL, "ttl": "1h"}
    assert sent["messages"][3]["content"][0]["cache_control"] == EPHEMERAL  # 5 min
    _accepted_by_the_fake(sent)


_TTL_MARKS = st.sampled_from(
    [None, EPHEMERAL, {**EPHEMERAL, "ttl": "5m"}, {**EPHEMERAL, "ttl": "1h"}]
)


@st.composite
def _marked_chats(draw: st.DrawFn) -> dict[str, Any]:
    """A long system prompt, then turns and system messages in any order, any of them
    carrying the caller's mark of any TTL (tools too)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": LONG}]
    for i in range(draw(st.integers(1, 4))):
        role = draw(st.sampled_from(["user", "assistant", "system", "developer"]))
        mark = draw(_TTL_MARKS)
        block: dict[str, Any] = {"type": "text", "text": f"turn {i} " * 50}
        messages.append(
            {"role": role, "content": [block if mark is None else {**block, "cache_control": mark}]}
        )
    tools = [
        {**TOOL, "cache_control": mark} if mark is not None else TOOL
        for mark in draw(st.lists(_TTL_MARKS, max_size=2))
    ]
    return {"model": SONNET, "messages": messages, **({"tools": tools} if tools else {})}


@settings(max_examples=1000, deadline=None)
@given(_marked_chats(), st.sampled_from(["5m", "1h"]), st.booleans())
def test_injection_never_makes_an_accepted_request_refused(
    body: dict[str, Any], ttl: str, rolling: bool
) -> None:
    # The property behind the TTL-order regressions: whatever the caller's marks and
    # wherever its system messages sit, a request the provider takes is still taken once
    # limpet has added its breakpoints.
    try:
        _accepted_by_the_fake(body)
    except PromptCacheRefusal:
        return  # refused before injection: not injection's doing
    sent = inject_cache_control(body, CacheControlConfig(ttl=ttl, rolling=rolling))
    _accepted_by_the_fake(sent)


@pytest.mark.parametrize("ttl", ["60m", "3600s", "30m", "1H", "²h", "①h"])
def test_a_ttl_no_family_offers_is_refused_naming_the_offered_ones(ttl: str) -> None:
    # Regression: "60m" was taken, ordered as an hour and sent as the 5 min default,
    # before a caller's 1 h mark: a 400 from Anthropic, and never the hour asked for.
    with pytest.raises(ConfigurationError, match=r"CacheControlConfig\.ttl: .*'5m', '1h'"):
        CacheControlConfig(ttl=ttl)


def test_a_ttl_only_another_family_offers_is_ordered_as_the_default_it_is_sent_as() -> None:
    # Regression: the TTL asked for was ordered, the TTL sent (the default, where the
    # model's family does not offer it) was not: 5 min went out before the caller's 1 h.
    five_minutes_only = replace(FAMILIES["anthropic"], ttls=("5m",))
    table = CapabilityTable.of({"anthropic/*": five_minutes_only, "acme/*": FAMILIES["anthropic"]})
    body = chat(LONG, "hi")
    body["messages"].append(_marked_turn("doc", "1h"))
    sent = inject_cache_control(body, CacheControlConfig(ttl="1h", capabilities=table))
    _accepted_by_the_fake(sent)
    alone = inject_cache_control(chat(), CacheControlConfig(ttl="1h", capabilities=table))
    assert alone["messages"][0]["content"][0]["cache_control"] == EPHEMERAL


@pytest.mark.parametrize("callers_ttl", ["²m", "①h", "5 m", "m", "soon"])
def test_a_callers_ttl_limpet_cannot_read_is_left_to_the_provider(callers_ttl: str) -> None:
    # Regression: "²m" passed str.isdigit() and made int() raise a bare ValueError before
    # anything was sent. The caller's mark is sent as given; limpet counts it as 5 min.
    body = chat(LONG, "hi")
    body["messages"].append(_marked_turn("doc", callers_ttl))
    sent = inject_cache_control(body, CacheControlConfig(ttl="1h"))
    assert _sent_ttls(sent) == ["1h", callers_ttl]
    assert sent["messages"][-1] is body["messages"][-1]


_TTL_COUNTS = st.text(
    st.characters(categories=("Nd", "No")) | st.sampled_from("0123456789"), max_size=3
)
_TTLS = st.builds(str.__add__, _TTL_COUNTS, st.sampled_from(["s", "m", "h", "d", ""]))


@settings(max_examples=500, deadline=None)
@given(st.lists(_TTLS, max_size=3), st.lists(_TTLS, max_size=3), _TTLS)
def test_ttl_between_takes_any_string_and_answers_one_of_its_own(
    earlier: list[str], later: list[str], wanted: str
) -> None:
    ttl = ttl_between(earlier, later, wanted)
    assert ttl is None or ttl in [*earlier, *later, wanted]


def test_callers_marks_out_of_order_get_no_mark_between_them() -> None:
    body = chat(tools=[{**TOOL, "cache_control": EPHEMERAL}])
    body["messages"].append(_marked_turn("x", "1h"))
    assert inject_cache_control(body, CacheControlConfig(ttl="1h")) is body


@pytest.mark.parametrize(
    "system",
    [
        "",
        [{"type": "text", "text": LONG}, {"type": "image_url", "image_url": {"url": "x"}}],
        [{"type": "text", "text": LONG}, {"type": "text", "text": ""}],
    ],
)
def test_blocks_that_cannot_take_a_mark_are_left_alone(system: Any) -> None:
    body = chat(system)
    assert inject_cache_control(body) is body


def test_every_leading_system_message_counts_and_the_last_is_marked() -> None:
    body = chat("z" * 2400)  # 604 tokens each: only together over the minimum
    body["messages"].insert(1, {"role": "developer", "content": "w" * 2400})
    assert inject_cache_control(chat("z" * 2400)) == chat("z" * 2400)
    sent = inject_cache_control(body)
    assert sent["messages"][0] is body["messages"][0]
    assert sent["messages"][1]["content"][0]["cache_control"] == EPHEMERAL


def test_injected_breakpoints_turn_into_cache_reads_at_the_provider() -> None:
    provider = ProviderPromptCache()
    first, second = (inject_cache_control(chat(LONG, q)) for q in ("one?", "two?"))
    wrote = provider.account(SONNET, first, count_prompt_tokens(first), now=0.0)
    read = provider.account(SONNET, second, count_prompt_tokens(second), now=1.0)
    assert wrote.cache_write_tokens > 2000 and wrote.cached_tokens == 0
    assert read.cached_tokens == wrote.cache_write_tokens and read.cache_write_tokens == 0


def test_capability_lookup_normalises_slugs() -> None:
    assert model_slug("Anthropic/Claude-Haiku-4.5:nitro") == "anthropic/claude-haiku-4-5"
    haiku = DEFAULT_CAPABILITIES.lookup("anthropic/claude-haiku-4.5:nitro")
    assert haiku is not None and haiku.min_tokens == 4096
    sonnet = DEFAULT_CAPABILITIES.lookup(SONNET)
    assert sonnet is not None
    assert (sonnet.kind, sonnet.min_tokens, sonnet.max_breakpoints) == ("explicit", 1024, 4)
    assert (sonnet.read_multiplier, sonnet.write_multiplier, sonnet.write_1h_multiplier) == (
        0.1,
        1.25,
        2.0,
    )
    gpt41 = DEFAULT_CAPABILITIES.lookup("openai/gpt-4.1-mini")
    assert gpt41 is not None and gpt41.read_multiplier == 0.25
    assert DEFAULT_CAPABILITIES.lookup("acme/model") is None
    assert DEFAULT_CAPABILITIES.lookup(None) is None


def test_user_overrides_win() -> None:
    table = DEFAULT_CAPABILITIES.with_overrides(
        {
            "anthropic/claude-sonnet-4-6": replace(FAMILIES["anthropic"], min_tokens=8192),
            "llama-*": FAMILIES["groq"],
        }
    )
    assert table.lookup(SONNET) == replace(FAMILIES["anthropic"], min_tokens=8192)
    assert table.lookup("llama-3.3-70b-versatile") == FAMILIES["groq"]
    assert DEFAULT_CAPABILITIES.lookup(SONNET) == FAMILIES["anthropic"]
    body = chat()
    assert inject_cache_control(body, CacheControlConfig(capabilities=table)) is body


def test_an_automatic_family_can_be_made_explicit() -> None:
    explicit = replace(FAMILIES["anthropic"], family="acme")
    config = CacheControlConfig(capabilities=CapabilityTable.of({"acme/*": explicit}))
    sent = inject_cache_control(chat(model="acme/model"), config)
    assert count_breakpoints(sent) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: CacheControlConfig(ttl=""),
        lambda: CacheControlConfig(chars_per_token=0),
        lambda: CacheControlConfig(capabilities={}),  # type: ignore[arg-type]
        lambda: CacheCapability(family="f", kind="sometimes"),  # type: ignore[arg-type]
        lambda: CacheCapability(family="f", kind="explicit", min_tokens=-1),
        lambda: CacheCapability(family="f", kind="explicit", read_multiplier=-0.1),
        lambda: CapabilityTable((("x", "not a capability"),)),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_is_refused(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


def test_the_ttl_every_mark_asks_for() -> None:
    assert breakpoint_ttl(chat()) is None
    assert breakpoint_ttl(inject_cache_control(chat())) == "5m"
    one_hour = inject_cache_control(chat(LONG, "q"), CacheControlConfig(ttl="1h", rolling=True))
    assert count_breakpoints(one_hour) == 2 and breakpoint_ttl(one_hour) == "1h"
    mixed = inject_cache_control(chat(), CacheControlConfig(ttl="1h"))
    mixed["tools"] = [{"type": "function", "cache_control": EPHEMERAL}]
    assert breakpoint_ttl(mixed) is None
    assert breakpoint_ttl(chat(cache_control={"type": "ephemeral", "ttl": "1h"})) == "1h"

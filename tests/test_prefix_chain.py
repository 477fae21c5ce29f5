"""prefix_chain: the prompt hashed as a provider renders it, a link per breakpoint and message."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.errors import InvalidRequestError
from limpet.routing.prefix import prefix_chain

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}


def marked(text: str, **marker: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {**CC, **marker}}]


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def test_a_link_closes_every_message() -> None:
    chain = prefix_chain(
        body(
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        )
    )
    assert [(link.depth, link.message, link.boundary) for link in chain.links] == [
        (0, 0, True),
        (1, 1, True),
        (2, 2, True),
    ]
    assert [link.final for link in chain.links] == [False, False, True]
    assert chain.first_turn == 1
    assert chain.breakpoints == ()
    assert len({link.hash for link in chain.links}) == 3


def test_a_breakpoint_inside_a_message_gets_its_own_link() -> None:
    content = [
        {"type": "text", "text": "a long document", "cache_control": {**CC, "ttl": "1h"}},
        {"type": "text", "text": "the question"},
    ]
    chain = prefix_chain(body({"role": "user", "content": content}))
    assert [(link.breakpoint, link.ttl, link.boundary, link.final) for link in chain.links] == [
        (True, "1h", False, False),
        (False, None, True, True),
    ]
    assert not chain.trailing_breakpoint


def test_a_breakpoint_on_the_last_block_shares_the_message_link() -> None:
    chain = prefix_chain(body({"role": "user", "content": marked("hi")}))
    assert len(chain.links) == 1
    link = chain.links[0]
    assert link.breakpoint and link.boundary and link.final
    assert chain.trailing_breakpoint


def test_a_string_is_one_text_block_and_markers_are_not_content() -> None:
    plain = prefix_chain(body({"role": "user", "content": "hello there"}))
    block = prefix_chain(
        body({"role": "user", "content": [{"type": "text", "text": "hello there"}]})
    )
    with_marker = prefix_chain(body({"role": "user", "content": marked("hello there", ttl="1h")}))
    message_marker = prefix_chain(
        body({"role": "user", "content": "hello there", "cache_control": CC})
    )
    hashes = {c.links[-1].hash for c in (plain, block, with_marker, message_marker)}
    assert len(hashes) == 1
    assert plain.conversation == with_marker.conversation == message_marker.conversation
    assert message_marker.trailing_breakpoint


def test_render_order_is_tools_then_system_then_messages() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    early = prefix_chain(
        body(
            {"role": "system", "content": "rules"},
            {"role": "user", "content": "hi"},
            tools=tools,
        )
    )
    late = prefix_chain(
        body(
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "rules"},
            tools=tools,
        )
    )
    assert [link.hash for link in early.links] == [link.hash for link in late.links]
    assert early.links[0].message == -1  # the tools section
    assert early.first_turn == late.first_turn == 2


def test_a_marked_tool_is_a_breakpoint_and_its_marker_is_not_content() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    plain = prefix_chain(body({"role": "user", "content": "hi"}, tools=[tool]))
    marked_tool = prefix_chain(
        body({"role": "user", "content": "hi"}, tools=[{**tool, "cache_control": CC}])
    )
    assert plain.links[0].hash == marked_tool.links[0].hash
    assert marked_tool.links[0].breakpoint and not plain.links[0].breakpoint


def test_a_top_level_cache_control_marks_the_final_block() -> None:
    chain = prefix_chain(body({"role": "user", "content": "hi"}, cache_control=CC))
    assert chain.trailing_breakpoint


def test_the_model_is_part_of_every_hash() -> None:
    a = prefix_chain(body({"role": "user", "content": "hi"}))
    b = prefix_chain({**body({"role": "user", "content": "hi"}), "model": "openai/gpt-5-mini"})
    assert a.links[0].hash != b.links[0].hash
    assert a.conversation != b.conversation


def test_every_turn_of_a_rolling_chat_shares_the_earlier_turns_links() -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}]
    previous: list[str] = []
    conversations = set()
    for turn in range(5):
        # The caller keeps history as strings and marks only the newest turn.
        request = body(*history, {"role": "user", "content": marked(f"question {turn}")})
        chain = prefix_chain(request)
        hashes = [link.hash for link in chain.links]
        assert hashes[: len(previous)] == previous
        conversations.add(chain.conversation)
        history += [
            {"role": "user", "content": f"question {turn}"},
            {"role": "assistant", "content": f"answer {turn}"},
        ]
        previous = [*hashes, prefix_chain(body(*history)).links[-1].hash]
    assert len(conversations) == 1


def test_the_conversation_key_is_rendered_content_not_raw_json() -> None:
    string = body({"role": "user", "content": "hi"})
    blocks = body({"role": "user", "content": marked("hi")})
    assert prefix_chain(string).conversation == prefix_chain(blocks).conversation


def test_tool_calls_and_names_are_content() -> None:
    call = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    a = prefix_chain(body({"role": "assistant", "content": None, "tool_calls": call}))
    b = prefix_chain(body({"role": "assistant", "content": None}))
    c = prefix_chain(body({"role": "user", "content": "hi", "name": "ann"}))
    d = prefix_chain(body({"role": "user", "content": "hi", "name": "bob"}))
    assert a.links[0].hash != b.links[0].hash
    assert c.links[0].hash != d.links[0].hash


def test_odd_shapes_are_hashed_not_rejected() -> None:
    chain = prefix_chain({"model": MODEL, "messages": ["junk", {"role": "user", "content": 7}]})
    assert len(chain.links) == 2
    assert prefix_chain({"model": MODEL}).links == ()
    with pytest.raises(InvalidRequestError):
        prefix_chain(body({"role": "user", "content": [{"type": "text", "text": object()}]}))


@given(
    st.lists(
        st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=12), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_markers_and_string_form_never_change_a_hash(turns: list[tuple[str, str, bool]]) -> None:
    plain = [{"role": role, "content": text} for role, text, _ in turns]
    dressed = [
        {"role": role, "content": marked(text) if mark else [{"type": "text", "text": text}]}
        for role, text, mark in turns
    ]
    a, b = prefix_chain(body(*plain)), prefix_chain(body(*dressed))
    assert [link.hash for link in a.links] == [link.hash for link in b.links]
    assert [link.breakpoint for link in b.links] == [mark for _, _, mark in turns]

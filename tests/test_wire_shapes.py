"""A request's messages, content parts, tool calls, tools and response format have the
OpenAI wire shapes before any network call; the ``openai`` package is the reference."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import pytest
import typing_extensions
from hypothesis import assume, given
from hypothesis import strategies as st
from openai.types.chat import (
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartInputAudioParam,
    ChatCompletionContentPartRefusalParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionFunctionMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionToolMessageParam,
)
from openai.types.chat.chat_completion_content_part_param import File
from openai.types.shared_params import ResponseFormatJSONSchema

from limpet.errors import InvalidRequestError
from limpet.pipeline.validation import validate_request
from limpet.pipeline.wire_shapes import (
    CONTENT_PART_SHAPES,
    MESSAGE_SHAPES,
    RESPONSE_FORMAT_SHAPES,
    TOOL_CALL_SHAPES,
    TOOL_SHAPES,
    Shape,
)

USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages or [USER]), **fields}


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        (body({"role": "tool", "content": "18 C"}), "messages[0].tool_call_id"),
        (body({"role": "tool", "content": "18 C", "tool_call_id": 1}), "messages[0].tool_call_id"),
        (body({"role": "user", "content": "x", "name": 3}), "messages[0].name"),
        (body({"role": "user", "content": []}), "messages[0].content"),
        (body({"role": "user", "content": ["x"]}), "messages[0].content[0]"),
        (body({"role": "user", "content": [{"text": "x"}]}), "messages[0].content[0]"),
        (body({"role": "user", "content": [{"type": "text"}]}), "messages[0].content[0].text"),
        (
            body({"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}),
            "messages[0].content[0].image_url",
        ),
        (
            body({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            body({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
            "messages[0].content[0].input_audio.data",
        ),
        (
            body({"role": "assistant", "content": [{"type": "refusal"}]}),
            "messages[0].content[0].refusal",
        ),
        (body({"role": "user", "content": [{"type": "file"}]}), "messages[0].content[0].file"),
        (body(USER, {"role": "assistant"}), "messages[1].content"),
        (
            body(USER, {"role": "assistant", "content": None, "tool_calls": "call"}),
            "messages[1].tool_calls",
        ),
        (
            body(USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}),
            "messages[1].tool_calls[0]",
        ),
        (
            body(USER, {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": 1}]}),
            "messages[1].tool_calls[0].id",
        ),
        (
            # The mistake of passing the arguments as a dict: the wire wants a JSON string.
            body(
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {"a": 1}}}],
                },
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (body(tools=[{"type": "function"}]), "tools[0].function"),
        (body(tools=[{"type": "function", "function": {}}]), "tools[0].function.name"),
        (body(response_format={"type": "json_schema"}), "response_format.json_schema"),
        (
            body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
            "response_format.json_schema.name",
        ),
    ],
)
def test_a_part_without_its_wire_shape_is_refused_naming_it(
    request_body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_request(request_body)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: expected ")


def test_a_missing_field_is_said_to_be_required() -> None:
    with pytest.raises(InvalidRequestError, match=r"tool_call_id: expected a str \(it is required"):
        validate_request(body({"role": "tool", "content": "18 C"}))


@pytest.mark.parametrize(
    "request_body",
    [
        body(
            USER,
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "18 C", "tool_call_id": "call_1"},
            {"role": "tool", "content": [{"type": "text", "text": "18 C"}], "tool_call_id": "2"},
            tools=[TOOL],
        ),
        # The legacy function call, and an assistant message with a name.
        body(
            USER,
            {"role": "assistant", "content": None, "function_call": CALL["function"]},
            {"role": "assistant", "content": "ok", "name": "bot"},
        ),
        body(
            {
                "role": "user",
                "content": [
                    # OpenRouter's and Anthropic's extra fields ride along.
                    {
                        "type": "text",
                        "text": "Describe it.",
                        "cache_control": {"type": "ephemeral"},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                    },
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    # A type limpet does not know is the gateway's to judge.
                    {"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}},
                ],
            }
        ),
        body(tools=[TOOL, {"type": "web_search"}], tool_choice="auto"),
        body(response_format={"type": "json_schema", "json_schema": {"name": "answer"}}),
        body(response_format={"type": "json_object"}),
    ],
)
def test_parts_of_the_openai_shapes_pass(request_body: dict[str, Any]) -> None:
    validate_request(request_body)


# The discriminators, and the content a message's role decides (checked apart).
_NOT_SHAPED = {"type", "role", "content"}


def _required_shape(typed_dict: Any) -> dict[str, Any]:
    """What ``typed_dict`` marks ``Required``, as a ``Shape``: a str field as ``str``
    (a ``Literal`` of strs too), a nested TypedDict as the shape it requires in turn."""
    shape: dict[str, Any] = {}
    hints = typing.get_type_hints(typed_dict, include_extras=True)
    for name, hint in hints.items():
        if (
            name in _NOT_SHAPED
            or typing_extensions.get_origin(hint) is not typing_extensions.Required
        ):
            continue
        (inner,) = typing_extensions.get_args(hint)
        literal = typing.get_args(inner)  # a Literal's are its values: strs, here
        if inner is str or (literal and all(isinstance(value, str) for value in literal)):
            shape[name] = str
        else:
            assert typing_extensions.is_typeddict(inner), (typed_dict, name, inner)
            shape[name] = _required_shape(inner)
    return shape


@pytest.mark.parametrize(
    ("shape", "reference"),
    [
        (MESSAGE_SHAPES["tool"], ChatCompletionToolMessageParam),
        (MESSAGE_SHAPES["function"], ChatCompletionFunctionMessageParam),
        (CONTENT_PART_SHAPES["text"], ChatCompletionContentPartTextParam),
        (CONTENT_PART_SHAPES["image_url"], ChatCompletionContentPartImageParam),
        (CONTENT_PART_SHAPES["input_audio"], ChatCompletionContentPartInputAudioParam),
        (CONTENT_PART_SHAPES["refusal"], ChatCompletionContentPartRefusalParam),
        (CONTENT_PART_SHAPES["file"], File),
        (TOOL_CALL_SHAPES["function"], ChatCompletionMessageFunctionToolCallParam),
        (TOOL_SHAPES["function"], ChatCompletionFunctionToolParam),
        (RESPONSE_FORMAT_SHAPES["json_schema"], ResponseFormatJSONSchema),
    ],
)
def test_each_shape_requires_what_the_openai_package_requires(shape: Shape, reference: Any) -> None:
    assert _as_dicts(shape) == _required_shape(reference)


def test_every_shape_is_compared_with_the_openai_package() -> None:
    compared = {
        ("message", "tool"),
        ("message", "function"),
        *(("part", kind) for kind in ("text", "image_url", "input_audio", "refusal", "file")),
        ("tool call", "function"),
        ("tool", "function"),
        ("response format", "json_schema"),
    }
    tables: Mapping[str, Mapping[str, Shape]] = {
        "message": MESSAGE_SHAPES,
        "part": CONTENT_PART_SHAPES,
        "tool call": TOOL_CALL_SHAPES,
        "tool": TOOL_SHAPES,
        "response format": RESPONSE_FORMAT_SHAPES,
    }
    assert {(table, kind) for table, shapes in tables.items() for kind in shapes} == compared


def _as_dicts(shape: Shape) -> dict[str, Any]:
    return {name: v if isinstance(v, type) else _as_dicts(v) for name, v in shape.items()}


# -- any request of the wire shapes passes; any one required field taken away is named --

_text = st.text(min_size=1, max_size=8)
_parts = st.lists(
    st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, _text),
        st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, _text),
        st.builds(
            lambda d: {"type": "input_audio", "input_audio": {"data": d, "format": "wav"}}, _text
        ),
        st.builds(lambda: {"type": "file", "file": {"file_id": "file-1"}}),  # fresh each time
    ),
    min_size=1,
    max_size=3,
)
_call = st.builds(
    lambda i, n: {"id": i, "type": "function", "function": {"name": n, "arguments": "{}"}},
    _text,
    _text,
)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, st.one_of(_text, _parts)),
    st.builds(lambda c: {"role": "system", "content": c}, _text),
    st.builds(
        lambda calls: {"role": "assistant", "content": None, "tool_calls": calls},
        st.lists(_call, min_size=1, max_size=2),
    ),
    st.builds(lambda c, i: {"role": "tool", "content": c, "tool_call_id": i}, _text, _text),
)
_requests = st.builds(
    lambda messages, tools: {"model": "m", "messages": messages, "tools": tools},
    st.lists(_message, min_size=1, max_size=4),
    st.lists(st.builds(lambda n: {"type": "function", "function": {"name": n}}, _text)),
)


def _required_places(request_body: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Every (path of an object, the object, a field of it) that a wire shape requires."""
    shaped: list[tuple[str, dict[str, Any], Shape]] = []
    for index, message in enumerate(request_body["messages"]):
        path = f"messages[{index}]"
        shaped.append((path, message, MESSAGE_SHAPES.get(message["role"], {})))
        if isinstance(message["content"], list):
            for at, part in enumerate(message["content"]):
                shaped.append((f"{path}.content[{at}]", part, CONTENT_PART_SHAPES[part["type"]]))
        for at, call in enumerate(message.get("tool_calls", ())):
            shaped.append((f"{path}.tool_calls[{at}]", call, TOOL_CALL_SHAPES[call["type"]]))
    for index, tool in enumerate(request_body["tools"]):
        shaped.append((f"tools[{index}]", tool, TOOL_SHAPES[tool["type"]]))
    return [place for path, value, shape in shaped for place in _shape_places(value, shape, path)]


def _shape_places(value: dict[str, Any], shape: Shape, path: str) -> list[tuple[str, Any, str]]:
    places = []
    for name, wanted in shape.items():
        places.append((path, value, name))
        if not isinstance(wanted, type):
            places += _shape_places(value[name], wanted, f"{path}.{name}")
    return places


@given(request_body=_requests)
def test_any_request_of_the_wire_shapes_passes(request_body: dict[str, Any]) -> None:
    validate_request(request_body)


@given(request_body=_requests, data=st.data())
def test_taking_away_any_required_field_is_refused_naming_it(
    request_body: dict[str, Any], data: st.DataObject
) -> None:
    places = _required_places(request_body)
    assume(places)
    path, holder, name = data.draw(st.sampled_from(places))
    del holder[name]
    with pytest.raises(InvalidRequestError) as info:
        validate_request(request_body)
    assert info.value.field == f"{path}.{name}"

"""Bad input fails before any network call, naming the field."""

from __future__ import annotations

import copy
import enum
from typing import Any, Literal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from limpet.config import CachePolicy
from limpet.errors import InvalidRequestError
from limpet.pipeline.keys import LARGE_REQUEST_BYTES, looks_large
from limpet.pipeline.request import chat_request, embed_request
from limpet.pipeline.validation import (
    MAX_JSON_DEPTH,
    MAX_SECONDS,
    json_problem,
    response_format_param,
    strict_json_schema,
    validate_fields,
    validate_request,
    validate_ttl,
)

GOOD: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        # Unhashable roles: a set lookup would raise TypeError rather than name the field.
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": {"r": 1}, "content": "x"}]}, "messages[0].role"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "x"}]},
                    {"role": ["user"], "content": "x"},
                ]
            },
            "messages[1].role",
        ),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "user"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "0"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": -3}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"stop": 3}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": -1}, "top_logprobs"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
        ({"user": 42}, "user"),
        ({"messages": [{"role": "function", "content": "42"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "name": "f", "content": 42}]}, "messages[0].content"),
    ],
)
def test_bad_input_names_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_request({**GOOD, **override})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: expected ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"temperature": 0, "top_p": 1, "max_tokens": 5, "n": 1},
        {"seed": 7, "stop": "\n", "logprobs": True, "top_logprobs": 5, "user": "u-1"},
        {"stop": ["a", "b"], "parallel_tool_calls": False, "seed": None, "logprobs": None},
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}]},
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "1"},
            ]
        },
        {  # the deprecated function-calling turn, still in the OpenAI SDK's types
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "f", "arguments": "{}"},
                },
                {"role": "function", "name": "f", "content": "42"},
                {"role": "function", "name": "f", "content": None},
            ]
        },
    ],
)
def test_good_input_passes(override: dict[str, Any]) -> None:
    validate_request({**GOOD, **override})


@pytest.mark.parametrize(
    "ttl", [0, -1, float("inf"), float("nan"), "60", True, 1e308, MAX_SECONDS + 1]
)
def test_bad_ttl(ttl: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^ttl: expected"):
        validate_ttl(ttl)


def test_good_ttl() -> None:
    assert validate_ttl(None) is None
    assert validate_ttl(5) == 5.0
    assert validate_ttl(MAX_SECONDS) == MAX_SECONDS


class _NotJSON:
    pass


class _NumpyLikeFloat(float):
    """A float subclass (as numpy's float64 is): orjson cannot write it."""


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("inf")}, "top_p"),
        ({"frequency_penalty": float("-inf")}, "frequency_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"logit_bias": {"50256": float("nan")}}, "logit_bias.50256"),
        ({"logit_bias": {"50256": "a lot"}}, "logit_bias"),
        ({"provider": {"max_price": {"prompt": float("inf")}}}, "provider.max_price.prompt"),
        ({"metadata": {"when": object()}}, "metadata.when"),
        ({"metadata": {1: "x"}}, "metadata"),
        ({"stop": {"a", "b"}}, "stop"),
        ({"seed": _NumpyLikeFloat(1.5)}, "seed"),
        ({"tools": "oops"}, "tools"),
        ({"tools": ["oops"]}, "tools[0]"),
        ({"tools": [{"function": {"name": "f"}}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"x": float("nan")}}]}, "tools[0].function.x"),
        ({"tool_choice": 3}, "tool_choice"),
        ({"response_format": _NotJSON}, "response_format"),
        ({"response_format": _NotJSON()}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"schema": {}}}, "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": _NotJSON()}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "name": float("nan")}]},
            "messages[0].name",
        ),
    ],
)
def test_bad_values_anywhere_name_their_path(override: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_request({**GOOD, **override})
    assert info.value.field == field


@pytest.mark.parametrize(
    "override",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "auto"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        {"response_format": {"type": "json_object"}},
        {"logit_bias": {"50256": -100, "1": 0.5}},
        {"provider": {"order": ["a", "b"], "max_price": {"prompt": 1.5}}, "top_k": 40},
        {"frequency_penalty": -2, "presence_penalty": 1.5, "stop": ("a", "b")},
    ],
)
def test_good_shapes_pass(override: dict[str, Any]) -> None:
    validate_request({**GOOD, **override})


def test_a_pydantic_model_class_becomes_the_openai_sdks_json_schema_format() -> None:

    from openai.lib._parsing._completions import type_to_response_format_param
    from pydantic import BaseModel

    class Step(BaseModel):
        explanation: str
        output: int | None = None

    class Answer(BaseModel):
        steps: list[Step]
        final: str
        kind: Literal["short", "long"] = "short"

    converted = response_format_param(Answer)
    assert converted == type_to_response_format_param(Answer)
    assert isinstance(converted, dict) and converted["type"] == "json_schema"
    assert converted["json_schema"]["name"] == "Answer"
    validate_request({**GOOD, "response_format": converted})
    assert response_format_param(Answer(steps=[], final="x")) is not converted  # not a class


def test_other_response_formats_are_left_alone() -> None:
    value = {"type": "json_object"}
    assert response_format_param(value) is value
    assert response_format_param(_NotJSON) is _NotJSON


_schemas = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "boolean"])}),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(), inner)},
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
    ),
    max_leaves=12,
)


def _dicts(schema: Any) -> list[dict[str, Any]]:
    """Every dict in ``schema``, at any depth."""
    found = []
    if isinstance(schema, dict):
        found.append(schema)
        for value in schema.values():
            found.extend(_dicts(value))
    elif isinstance(schema, list):
        for item in schema:
            found.extend(_dicts(item))
    return found


def _objects(schema: Any) -> list[dict[str, Any]]:
    return [node for node in _dicts(schema) if node.get("type") == "object"]


@given(_schemas)
def test_a_strict_schema_closes_every_object_and_requires_every_property(schema: Any) -> None:
    strict = strict_json_schema(schema)
    for obj in _objects(strict):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj.get("properties", {}))
    assert strict_json_schema(strict) == strict  # idempotent
    assert len(_objects(strict)) == len(_objects(schema))


@settings(max_examples=200, deadline=None)
@given(
    model=st.text(max_size=4),
    contents=st.lists(
        st.one_of(
            st.text(max_size=20),
            st.none(),
            st.lists(st.just({"type": "text", "text": "x"}), min_size=1),
        ),
        min_size=1,
        max_size=5,
    ),
    extra=st.booleans(),
)
def test_validation_sums_plain_text_as_looks_large_would(
    model: str, contents: list[object], extra: bool
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": c} for c in contents]
    if extra:
        messages[0]["name"] = "n"
    body = {"model": model, "messages": messages, "temperature": 0}
    if not model.strip():  # what the one-pass check must still reject
        with pytest.raises(InvalidRequestError, match="model"):
            validate_request(body)
        return
    try:
        chars = validate_request(body)
    except InvalidRequestError:
        assert any(not isinstance(c, str | list) for c in contents)
        return
    plain = not extra and all(isinstance(c, str) for c in contents)
    assert chars == (sum(len(c) for c in contents if isinstance(c, str)) if plain else -1)
    assert looks_large(body, chars) == looks_large(body)


class _Str(str):
    pass


# A message that is not plain (its content is a list): the request takes the long way.
_NOT_PLAIN = {"role": "user", "content": [{"type": "text", "text": "x"}]}
_ROLES = st.sampled_from(["user", "system", "assistant", "developer", "tool", "User", "", None])
_VALUES = st.one_of(
    st.text(max_size=5),
    st.text(max_size=5).map(_Str),
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.lists(st.text(max_size=3), max_size=2),
    st.just({"a": 1}),
    st.just(("user",)),
)


def _verdict(body: dict[str, Any]) -> str:
    try:
        validate_request(body)
    except InvalidRequestError as exc:
        return f"invalid: {exc.field}"
    return "ok"


@settings(max_examples=500, deadline=None)
@given(
    messages=st.lists(
        st.builds(
            lambda role, content, extra: {"role": role, "content": content, **extra},
            _ROLES | _VALUES,
            _VALUES,
            st.dictionaries(st.sampled_from(["name", "x"]), st.none() | st.text(max_size=3)),
        ),
        min_size=1,
        max_size=3,
    ),
    params=st.dictionaries(
        st.sampled_from(["temperature", "max_tokens", "seed", "logprobs", "x"]), _VALUES, max_size=3
    ),
)
def test_the_one_pass_check_judges_as_the_long_way_does(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    """Whatever its messages, a request fails (naming the same field) or passes alike
    whether the one-pass check of plain messages may take it or the long way must."""
    quick = _verdict({"model": "m", "messages": messages, **params})
    assert _verdict({"model": "m", "messages": [*messages, _NOT_PLAIN], **params}) == quick


@pytest.mark.parametrize("size", [LARGE_REQUEST_BYTES - 1, LARGE_REQUEST_BYTES])
def test_the_sum_validation_returns_tells_a_large_request(size: int) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}
    chars = validate_request(body)
    assert chars == size
    assert looks_large(body, chars) == looks_large(body) == (size >= LARGE_REQUEST_BYTES)


def test_a_call_keeps_its_own_copy_of_its_headers() -> None:
    # Regression: the request kept the caller's dict, keyed its credential scope at once
    # and sent it after awaits: a caller reusing the dict for its next call (another
    # tenant's key) had one key's answer stored under the other's scope.
    policy = CachePolicy()
    headers = {"Authorization": "Bearer sk-tenant-a"}
    chat = chat_request(dict(GOOD), None, None, 60.0, policy, None, headers)
    embed = embed_request(
        "m",
        ["x"],
        {},
        dimensions=None,
        encoding_format=None,
        cache=None,
        ttl=None,
        default_ttl=60.0,
        policy=policy,
        max_inputs=8,
        extra_headers=headers,
    )
    headers["Authorization"] = "Bearer sk-tenant-b"
    assert chat.headers == embed.headers == {"Authorization": "Bearer sk-tenant-a"}


@pytest.mark.parametrize("where", ["field", "message", "tool"])
def test_json_nested_past_what_can_be_sent_is_a_clear_error_not_a_recursion_error(
    where: str,
) -> None:
    # Regression: a body nested 1,000 deep overflowed the validation walk's stack
    # (RecursionError out of complete(); a 500 with a traceback from `limpet serve`).
    deep: object = "x"
    for _ in range(1_000):
        deep = [deep]
    body: dict[str, Any] = {**GOOD}
    if where == "field":
        body["metadata"] = {"deep": deep}
    elif where == "message":
        body["messages"] = [{"role": "user", "content": "x", "name": "n", "extra": deep}]
    else:
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    with pytest.raises(InvalidRequestError, match="nested at most 254 deep"):
        validate_request(body)


def test_json_at_the_depth_limit_is_sent_and_one_deeper_is_refused_naming_the_field() -> None:
    # The limit is the body's own, as orjson counts it: a field's value one level in.
    def nested(levels: int) -> object:
        deep: object = "x"
        for _ in range(levels):
            deep = [deep]
        return deep

    at_limit = {**GOOD, "metadata": nested(MAX_JSON_DEPTH - 1)}
    validate_request(at_limit)
    orjson.dumps(at_limit)  # what is checked is what can be sent
    with pytest.raises(InvalidRequestError, match=r"^metadata\[0\]"):
        validate_request({**GOOD, "metadata": nested(MAX_JSON_DEPTH)})
    with pytest.raises(InvalidRequestError, match=r"^dimensions_of\[0\]"):
        validate_fields({"dimensions_of": nested(MAX_JSON_DEPTH)})  # an embed() call's


# Models the OpenAI SDK's strict-schema rules must all be ported for: nested, described
# (a described nested model is a $ref with siblings), optional, lists, maps, recursive,
# enums, literals, unions, defaults.
class _Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class _Inner(BaseModel):
    x: int
    note: str | None = None


class _Described(BaseModel):
    inner: _Inner = Field(description="an inner thing")
    other: _Inner | None = Field(default=None, description="an optional inner")
    listed: list[_Inner] = Field(default_factory=list, description="inners")


class _Node(BaseModel):
    value: int
    children: list[_Node] = []


class _Tree(BaseModel):
    root: _Node = Field(description="the root")
    maybe: _Node | None = Field(default=None, description="another")


class _Cat(BaseModel):
    kind: Literal["cat"]
    meows: int


class _Dog(BaseModel):
    kind: Literal["dog"]
    barks: int


class _Everything(BaseModel):
    name: str = Field(description="the name")
    inner: _Inner
    items: list[_Inner]
    colour: _Colour
    described_colour: _Colour = Field(description="a colour", default=_Colour.RED)
    maybe: _Inner | None = None
    pet: _Cat | _Dog
    tagged: _Cat | _Dog = Field(discriminator="kind")
    count: int = 3
    scores: dict[str, int] = {}
    inners: dict[str, _Inner] = Field(default_factory=dict, description="by name")
    either: int | str | None


@pytest.mark.parametrize(
    "model", [_Inner, _Described, _Node, _Tree, _Cat, _Everything], ids=lambda m: m.__name__
)
def test_a_model_class_is_the_openai_sdks_strict_schema_byte_for_byte(
    model: type[BaseModel],
) -> None:
    from openai.lib._pydantic import to_strict_json_schema

    schema = model.model_json_schema()
    ours = strict_json_schema(schema)
    # Bytes, not ==: the order of a schema's keys is sent, and enters the key.
    assert orjson.dumps(ours) == orjson.dumps(to_strict_json_schema(model))
    assert schema == model.model_json_schema()  # not changed in place
    assert strict_json_schema(ours) == ours


def _refs(schema: Any) -> list[dict[str, Any]]:
    return [node for node in _dicts(schema) if "$ref" in node]


_leaves = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "integer", "null"])},
        optional={"default": st.none()},
    ),
    st.fixed_dictionaries(
        {"$ref": st.sampled_from(["#/$defs/A", "#/$defs/B"])},
        optional={"description": st.text(max_size=3), "default": st.none()},
    ),
    st.fixed_dictionaries(
        {"type": st.just("object"), "additionalProperties": _schemas},
    ),
)
_with_refs = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=3), inner)},
            optional={"description": st.text(max_size=3)},
        ),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)}),
        st.fixed_dictionaries(
            {"allOf": st.lists(inner, min_size=1, max_size=2)},
            optional={"description": st.text(max_size=3)},
        ),
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(body=_with_refs, a=_schemas, b=_schemas)
def test_a_strict_schema_follows_the_openai_sdks_rules(body: Any, a: Any, b: Any) -> None:
    from openai.lib._pydantic import _ensure_strict_json_schema

    # Definitions hold no $ref, so the SDK's own inlining ends.
    schema = {"$defs": {"A": a, "B": b}, **body}
    expected = copy.deepcopy(schema)
    expected = _ensure_strict_json_schema(expected, path=(), root=expected)
    strict = strict_json_schema(schema)
    assert orjson.dumps(strict) == orjson.dumps(expected)
    # Strict mode refuses a $ref with siblings: none is left.
    assert all(len(ref) == 1 for ref in _refs(strict))


class _Loop(BaseModel):
    next: _Loop = Field(description="never ends")


def test_a_described_ref_that_never_ends_names_response_format() -> None:
    # The SDK would recurse until the stack ran out.
    with pytest.raises(InvalidRequestError, match=r"^response_format: "):
        response_format_param(_Loop)
    for ref in ("#/$defs/Missing", "elsewhere.json#/A", "#/$defs/A/type"):
        schema = {"$defs": {"A": {"type": "integer"}}, "$ref": ref, "description": "d"}
        with pytest.raises(InvalidRequestError, match=r"^response_format: "):
            strict_json_schema(schema)


_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@given(
    key=st.builds(lambda a, c, b: a + c + b, st.text(max_size=3), _surrogates, st.text(max_size=3)),
    nest=st.lists(st.sampled_from(["dict", "list"]), max_size=4),
)
def test_a_key_that_is_not_utf8_is_named_where_it_is(key: str, nest: list[str]) -> None:
    # orjson refuses it as it writes ("str is not valid UTF-8"), naming nothing.
    value: Any = {key: 1}
    path = "field"
    for kind in nest:
        value = {"k": value} if kind == "dict" else [value]
    for kind in reversed(nest):
        path += ".k" if kind == "dict" else "[0]"
    problem = json_problem({"model": "m", "field": value})
    assert problem is not None and problem.field == path
    assert json_problem({"model": "m", key: 1}) is not None
    with pytest.raises(InvalidRequestError) as caught:
        validate_fields({"field": value})
    assert caught.value.field == path

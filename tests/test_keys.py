"""Cache keys: canonical, order-free, sensitive to every output-affecting field."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.errors import InvalidRequestError
from limpet.pipeline.keys import (
    KEY_SCHEMA_VERSION,
    TRANSPORT_ONLY_FIELDS,
    canonical_pieces,
    canonical_request,
    explain_key,
    request_key,
)
from limpet.routing.prefix import prefix_chain

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
    ),
    min_size=1,
    max_size=4,
)
requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["a/m1", "b/m2"]), "messages": messages},
    optional={
        "temperature": st.sampled_from([0, 0.5, 1]),
        "max_tokens": st.integers(1, 4096),
        "seed": st.integers(0, 100),
        "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    },
)

#: Fields that can change the output, each with two different values.
OUTPUT_FIELDS: dict[str, tuple[Any, Any]] = {
    "model": ("a/m1", "a/m1:nitro"),
    "messages": (
        [{"role": "user", "content": "x"}],
        [{"role": "user", "content": "y"}],
    ),
    "tools": ([{"type": "function", "function": {"name": "f"}}], []),
    "tool_choice": ("auto", "none"),
    "response_format": ({"type": "json_object"}, {"type": "text"}),
    "temperature": (0, 0.2),
    "top_p": (1, 0.9),
    "max_tokens": (10, 11),
    "stop": (["\n"], ["."]),
    "seed": (1, 2),
    "provider": ({"order": ["anthropic"]}, {"order": ["google"]}),
    "transforms": (["middle-out"], []),
    "plugins": ([{"id": "web"}], []),
    "reasoning": ({"effort": "high"}, {"effort": "low"}),
}


def key_of(body: dict[str, Any], **kwargs: str) -> str:
    return request_key(canonical_request(body), **kwargs)


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every dict's keys in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@settings(max_examples=200)
@given(requests, st.integers(0, 2**32))
def test_key_is_invariant_under_dict_order_at_any_depth(body: dict[str, Any], seed: int) -> None:
    reordered = shuffled(body, random.Random(seed))
    assert key_of(reordered) == key_of(body)
    assert canonical_request(reordered) == canonical_request(body)


def schema_format(properties: list[str]) -> dict[str, Any]:
    """A structured-output format whose object has ``properties``, in that order."""
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in properties}}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@settings(max_examples=100)
@given(requests, st.permutations(["reasoning", "answer", "confidence"]), st.integers(0, 2**32))
def test_the_order_within_schemas_counts_and_nowhere_else(
    body: dict[str, Any], order: list[str], seed: int
) -> None:
    # Regression: keys sorted at every depth made {"reasoning", "answer"} and {"answer",
    # "reasoning"} one request, though the model writes (so thinks) in schema order.
    first = ["reasoning", "answer", "confidence"]
    tool = {"type": "function", "function": {"name": "f", "parameters": schema_format(order)}}
    asked = {**body, "response_format": schema_format(order), "tools": [tool]}
    as_first = {
        **asked,
        "response_format": schema_format(first),
        "tools": [{**tool, "function": {"name": "f", "parameters": schema_format(first)}}],
    }
    assert (key_of(asked) == key_of(as_first)) == (order == first)
    # So within each field a self-hosted server takes a schema in (vLLM's guided_json...).
    for field in ("functions", "guided_json", "structured_outputs", "json_schema", "grammar"):
        schema = schema_format(order)["json_schema"]["schema"]
        other = schema_format(first)["json_schema"]["schema"]
        assert (key_of({**body, field: schema}) == key_of({**body, field: other})) == (
            order == first
        ), field
    # Every other dict, the fields' own order among them, still counts for nothing.
    rng = random.Random(seed)
    reordered = {k: asked[k] for k in rng.sample(list(asked), len(asked))}
    reordered["messages"] = shuffled(asked["messages"], rng)
    assert key_of(reordered) == key_of(asked)


@settings(max_examples=100)
@given(requests, st.sampled_from(sorted(OUTPUT_FIELDS)), st.booleans())
def test_any_output_field_change_changes_the_key(
    body: dict[str, Any], field: str, first: bool
) -> None:
    a, b = OUTPUT_FIELDS[field]
    before = {**body, field: a if first else b}
    after = {**body, field: b if first else a}
    assert key_of(before) != key_of(after)


@settings(max_examples=100)
@given(requests, st.sampled_from(sorted(TRANSPORT_ONLY_FIELDS)), json_values)
def test_transport_only_fields_do_not_count(body: dict[str, Any], field: str, value: Any) -> None:
    assert key_of({**body, field: value}) == key_of(body)


def test_the_transport_only_fields_are_exactly_these() -> None:
    assert {"stream", "stream_options", "user", "session_id", "prompt_cache_key", "usage"} == (
        TRANSPORT_ONLY_FIELDS
    )


def test_integral_float_temperature_equals_int() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert key_of({**body, "temperature": 0}) == key_of({**body, "temperature": 0.0})
    assert key_of({**body, "temperature": 0}) != key_of({**body, "temperature": 0.5})


def test_namespace_and_scope_separate_keys() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    keys = {
        key_of(body),
        key_of(body, namespace="tenant-a"),
        key_of(body, namespace="tenant-b"),
        key_of(body, scope="0.1"),
        key_of(body, namespace="a", scope="b"),
        key_of(body, namespace="ab", scope=""),
    }
    assert len(keys) == 6


def test_key_is_256_bit_hex() -> None:
    key = key_of({"model": "m", "messages": []})
    assert len(key) == 64
    int(key, 16)


def test_explain_key_shows_what_went_in() -> None:
    body = {
        "temperature": 0,
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "user": "u-1",
        "stream": True,
    }
    explanation = explain_key(body, namespace="ns")
    assert explanation.key == key_of(body, namespace="ns")
    assert explanation.schema_version == KEY_SCHEMA_VERSION
    assert explanation.fields == ("messages", "model", "temperature")
    assert explanation.ignored == ("stream", "user")
    assert explanation.canonical.startswith('{"messages":')
    assert "u-1" not in explanation.canonical


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("metadata", {1, 2}, "metadata"),
        ("seed", 2**64, "seed"),
        ("provider", {"order": ["a", -(2**63) - 1]}, r"provider\.order\[1\]"),
        ("messages", [{"role": "user", "content": "lone \ud800"}], r"messages\[0\]\.content"),
    ],
)
def test_what_json_cannot_carry_is_a_clear_error_naming_its_field(
    field: str, value: object, named: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], field: value}
    with pytest.raises(InvalidRequestError, match=f"^{named}: expected"):
        canonical_request(body)
    with pytest.raises(InvalidRequestError, match=f"^{named}: expected"):
        b"".join(canonical_pieces(body, piece=4))


def test_a_large_integral_float_is_keyed_as_the_float_it_is() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "foo": 1e20}
    assert b'"foo":1e+20' in canonical_request(body)
    assert canonical_request({**body, "foo": 256.0}) == canonical_request({**body, "foo": 256})


def conversation(body: dict[str, Any]) -> object:
    return prefix_chain(body).conversation


def test_the_conversation_follows_the_conversation_not_its_later_turns() -> None:
    system = {"role": "system", "content": "You are terse."}
    first = {"role": "user", "content": "Hello"}
    turn_1 = {"model": "m", "messages": [system, first]}
    turn_3 = {
        "model": "m",
        "messages": [
            system,
            first,
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": "More"},
        ],
    }
    other = {"model": "m", "messages": [system, {"role": "user", "content": "Bye"}]}
    assert conversation(turn_1) == conversation(turn_3)
    assert conversation(turn_1) != conversation(other)
    assert conversation(turn_1) != conversation({**turn_1, "model": "n"})


@given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_namespace_credential_and_scope_never_run_into_each_other(
    ns: str, credential: str, other_ns: str, other_credential: str
) -> None:
    body = {"model": "m", "messages": []}
    same = (ns, credential) == (other_ns, other_credential)
    a = key_of(body, namespace=ns, credential=credential, scope="0.0.0")
    b = key_of(body, namespace=other_ns, credential=other_credential, scope="0.0.0")
    assert (a == b) == same
    assert key_of(body, namespace=ns + credential) != key_of(
        body, namespace=ns, credential=credential or "x"
    )


def test_explain_key_shows_the_credential_scope() -> None:
    body = {"model": "m", "messages": []}
    explanation = explain_key(body, namespace="ns", credential="c" * 32)
    assert explanation.credential == "c" * 32
    assert explanation.key == key_of(body, namespace="ns", credential="c" * 32)
    assert explanation.key != key_of(body, namespace="ns")

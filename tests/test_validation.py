"""Bad input fails before any network call, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from limpet.errors import InvalidRequestError
from limpet.validation import validate_request, validate_ttl

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
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "x"}]}]},
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                {"role": "tool", "content": "42", "tool_call_id": "1"},
            ]
        },
    ],
)
def test_good_input_passes(override: dict[str, Any]) -> None:
    validate_request({**GOOD, **override})


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan"), "60", True])
def test_bad_ttl(ttl: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^ttl: expected"):
        validate_ttl(ttl)


def test_good_ttl() -> None:
    assert validate_ttl(None) is None
    assert validate_ttl(5) == 5.0

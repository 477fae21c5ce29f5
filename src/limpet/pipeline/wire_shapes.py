"""The OpenAI wire shapes a request's parts must have, checked before any network call.

A gateway answers a tool message without its ``tool_call_id``, a tool call whose
``arguments`` is a dict rather than a JSON string, or a content part without its text
with a 400, after a round trip (and a cache bypass would have sent it again each time).
Each table below says, for one kind of part, what a part of each known ``type`` (or
``role``) must carry: a field's type, or for a nested object the fields it must carry in
turn. They are what the ``openai`` package's TypedDicts mark ``Required``
(``tests/test_wire_shapes.py`` compares them); a type not listed is the gateway's to
judge (OpenRouter and its providers add their own), and optional fields are left alone.
Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn, Union

from limpet.errors import InvalidRequestError

__all__ = [
    "CONTENT_PART_SHAPES",
    "MESSAGE_SHAPES",
    "RESPONSE_FORMAT_SHAPES",
    "TOOL_CALL_SHAPES",
    "TOOL_SHAPES",
    "Shape",
    "check_content",
    "check_message",
    "check_response_format",
    "check_tools",
]

#: The fields an object must carry: each one's type, or the shape of the object it is.
Shape = Mapping[str, Union[type, "Shape"]]

#: Messages, by role: what a role needs besides ``role`` and ``content``.
MESSAGE_SHAPES: Mapping[str, Shape] = {"tool": {"tool_call_id": str}, "function": {"name": str}}
#: Content parts, by ``type``.
CONTENT_PART_SHAPES: Mapping[str, Shape] = {
    "text": {"text": str},
    "image_url": {"image_url": {"url": str}},
    "input_audio": {"input_audio": {"data": str, "format": str}},
    "refusal": {"refusal": str},
    "file": {"file": {}},
}
#: An assistant message's ``tool_calls``, by ``type``.
TOOL_CALL_SHAPES: Mapping[str, Shape] = {
    "function": {"id": str, "function": {"name": str, "arguments": str}}
}
#: ``tools``, by ``type``.
TOOL_SHAPES: Mapping[str, Shape] = {"function": {"function": {"name": str}}}
#: ``response_format``, by ``type``.
RESPONSE_FORMAT_SHAPES: Mapping[str, Shape] = {"json_schema": {"json_schema": {"name": str}}}

_TYPE_NAMES: Mapping[type, str] = {str: "a str", dict: "a dict"}
# What a part of each kind looks like, for the messages of errors.
_PART = "{'type': 'text', 'text': ...}"
_TOOL = "{'type': 'function', 'function': {'name': ...}}"
_TOOL_CALL = "{'id': ..., 'type': 'function', 'function': {'name': ..., 'arguments': '{...}'}}"


def check_message(message: Mapping[str, object], role: str, path: str) -> None:
    """What a message of ``role`` carries besides its content (``MESSAGE_SHAPES``), and an
    assistant's ``tool_calls``."""
    shape = MESSAGE_SHAPES.get(role)
    if shape is not None:
        _check_shape(message, shape, path)
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and role == "assistant":
        _check_typed_list(tool_calls, f"{path}.tool_calls", TOOL_CALL_SHAPES, _TOOL_CALL)


def check_content(parts: list[object], path: str) -> None:
    """A message's content given as parts: at least one, each a dict with a str ``type``
    and what that type carries (``CONTENT_PART_SHAPES``)."""
    if not parts:
        raise InvalidRequestError(path, "a str, or a non-empty list of content parts", parts)
    _check_typed_list(parts, path, CONTENT_PART_SHAPES, _PART)


def check_tools(tools: object, path: str) -> None:
    """``tools``: a list of dicts, each with a str ``type`` and what it carries."""
    _check_typed_list(tools, path, TOOL_SHAPES, _TOOL)


def check_response_format(value: Mapping[str, object], kind: str, path: str) -> None:
    """A ``response_format`` whose ``type`` is ``kind``: what that type carries."""
    _check_typed(value, kind, RESPONSE_FORMAT_SHAPES, path)


def _check_typed_list(items: object, path: str, shapes: Mapping[str, Shape], example: str) -> None:
    if type(items) is not list:
        raise InvalidRequestError(path, f"a list of dicts such as {example}", items)
    for index, item in enumerate(items):
        if type(item) is not dict or type(kind := item.get("type")) is not str:
            raise InvalidRequestError(f"{path}[{index}]", f"a dict such as {example}", item)
        _check_typed(item, kind, shapes, f"{path}[{index}]")


def _check_typed(
    value: Mapping[str, object], kind: str, shapes: Mapping[str, Shape], path: str
) -> None:
    shape = shapes.get(kind)
    if shape is not None:
        _check_shape(value, shape, path)


def _check_shape(value: Mapping[str, object], shape: Shape, path: str) -> None:
    """Raise naming the first field of ``value`` (at ``path``) that ``shape`` requires
    and it lacks, or has of another type."""
    for name, wanted in shape.items():
        field = value.get(name)
        if isinstance(wanted, type):
            if type(field) is not wanted:
                _refuse(f"{path}.{name}", _TYPE_NAMES[wanted], field, present=name in value)
            continue
        if type(field) is not dict:
            expected = "a dict with " + ", ".join(map(repr, wanted)) if wanted else "a dict"
            _refuse(f"{path}.{name}", expected, field, present=name in value)
        _check_shape(field, wanted, f"{path}.{name}")


def _refuse(path: str, expected: str, field: object, *, present: bool) -> NoReturn:
    if not present:
        raise InvalidRequestError(path, expected + " (it is required)")
    raise InvalidRequestError(path, expected, field)

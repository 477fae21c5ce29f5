"""Request validation: bad input fails here, naming the field, before any network call.

It runs on every call, the cache-hit path included, so it checks only what is cheap and
what a gateway would otherwise reject after a round trip (or worse, accept and bill).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from limpet.errors import InvalidRequestError

__all__ = ["ROLES", "validate_request", "validate_ttl"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_ROLES_TEXT = "one of " + ", ".join(sorted(ROLES))
_RANGES = (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0))
_COUNTS = ("max_tokens", "max_completion_tokens", "n")
# Exact types: bool is an int subclass, and True is no temperature.
_NUMBER_TYPES = (int, float)


def validate_request(body: Mapping[str, Any]) -> None:
    """Check a chat-completion request body.

    Raises:
        InvalidRequestError: naming the first offending field and what was expected.
    """
    # The common case runs on every call, hits included: one pass, no helper calls.
    model = body.get("model")
    if type(model) is not str or not model.strip():
        raise InvalidRequestError("model", "a non-empty str", model)
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        raise InvalidRequestError("messages", "a non-empty list of message dicts", messages)
    for message in messages:
        if type(message) is not dict or message.get("role") not in ROLES:
            break
        content = message.get("content")
        if type(content) is not str and type(content) is not list:
            break
    else:
        _check_parameters(body)
        return
    for index, message in enumerate(messages):
        _check_message(index, message)
    _check_parameters(body)


def validate_ttl(ttl: object, field: str = "ttl") -> float | None:
    """A TTL in seconds: None, or a finite number > 0."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
        raise InvalidRequestError(field, "a finite number of seconds > 0, or None", ttl)
    return float(ttl)


def _check_message(index: int, message: object) -> None:
    if not isinstance(message, dict):
        raise InvalidRequestError(f"messages[{index}]", "a dict with 'role' and 'content'", message)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(f"messages[{index}].role", _ROLES_TEXT, role)
    content = message.get("content")
    if isinstance(content, str | list):
        return
    if content is None and role == "assistant" and message.get("tool_calls"):
        return
    raise InvalidRequestError(
        f"messages[{index}].content", "a str or a list of content parts", content
    )


def _check_parameters(body: Mapping[str, Any]) -> None:
    for name, low, high in _RANGES:
        value = body.get(name)
        if value is not None and (type(value) not in _NUMBER_TYPES or not low <= value <= high):
            raise InvalidRequestError(name, f"a number from {low:g} to {high:g}", value)
    for name in _COUNTS:
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidRequestError(name, "an int >= 1", value)

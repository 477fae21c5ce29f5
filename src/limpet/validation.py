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


def validate_request(body: Mapping[str, Any]) -> None:
    """Check a chat-completion request body.

    Raises:
        InvalidRequestError: naming the first offending field and what was expected.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model", "a non-empty str", model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages", "a non-empty list of message dicts", messages)
    for index, message in enumerate(messages):
        _check_message(index, message)
    _check_number(body, "temperature", 0.0, 2.0)
    _check_number(body, "top_p", 0.0, 1.0)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        _check_positive_int(body, name)


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


def _check_number(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequestError(name, f"a number from {low:g} to {high:g}", value)


def _check_positive_int(body: Mapping[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(name, "an int >= 1", value)

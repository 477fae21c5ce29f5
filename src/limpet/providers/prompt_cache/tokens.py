"""Prompt length estimates: whether a prefix is long enough for a provider to cache. Pure.

The estimate only decides whether a prefix is worth marking (or routing on); a wrong
guess below the provider's minimum costs nothing (the request then simply caches nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["DEFAULT_CHARS_PER_TOKEN", "estimate_tokens", "marked_prefix_tokens"]

#: Characters per token for estimating prompt length: about four for English text. The
#: estimate only decides whether a prefix is worth marking; a wrong guess below the
#: provider's minimum costs nothing (the request then simply caches nothing).
DEFAULT_CHARS_PER_TOKEN = 4.0

# Per-message tokens beyond the content (role, separators), as in OpenAI's chat format.
_MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(value: object, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
    """Approximate tokens of a message (or any JSON value such as ``tools``).

    A message counts its text parts' characters plus a small fixed overhead; anything else
    counts its JSON.
    """
    if isinstance(value, Mapping) and "role" in value:
        content = value.get("content")
        chars = 0
        if isinstance(content, str):
            chars = len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                chars += len(text) if isinstance(text, str) else _json_chars(part)
        return _MESSAGE_OVERHEAD_TOKENS + math.ceil(chars / chars_per_token)
    return math.ceil(_json_chars(value) / chars_per_token)


def marked_prefix_tokens(
    body: Mapping[str, Any], chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
) -> int | None:
    """Approximate tokens up to a request's deepest ``cache_control`` mark in a message
    (tools, then messages in order, the marked message counted up to its marked block),
    or None when no message carries one."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    tokens = estimate_tokens(body["tools"], chars_per_token) if body.get("tools") else 0
    deepest: int | None = None
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        marked = [i for i, p in enumerate(parts) if isinstance(p, Mapping) and "cache_control" in p]
        if "cache_control" in message or (marked and marked[-1] == len(parts) - 1):
            tokens += estimate_tokens(message, chars_per_token)
            deepest = tokens
        elif marked:
            deepest = tokens + estimate_tokens(
                {**message, "content": parts[: marked[-1] + 1]}, chars_per_token
            )
            tokens += estimate_tokens(message, chars_per_token)
        else:
            tokens += estimate_tokens(message, chars_per_token)
    return deepest


def _json_chars(value: object) -> int:
    try:
        return len(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    except TypeError:
        return 0

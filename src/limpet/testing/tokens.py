"""A deterministic approximate tokenizer for the fake gateway.

Real tokenizers differ per model; tests need counts that are stable, cheap and close
enough to real ones that prefix-cache thresholds (1024 tokens, 128-token steps) mean
something. About four characters per token is the usual rule of thumb for English.

Example:
    >>> count_tokens("hello world")
    3
    >>> count_prompt_tokens({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    8
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

#: Characters per token, the usual approximation for English text.
CHARS_PER_TOKEN = 4

#: Tokens each message costs beyond its content (role and separators), as in OpenAI's chat
#: format.
MESSAGE_OVERHEAD_TOKENS = 4

#: Tokens every prompt costs for priming the assistant's reply.
REPLY_PRIMING_TOKENS = 3


def count_tokens(text: str) -> int:
    """Tokens in a piece of text: ``ceil(len(text) / 4)``, so at least 1 when non-empty.

    A text cut to ``n * CHARS_PER_TOKEN`` characters counts exactly ``n`` tokens, which is
    how the gateway honours ``max_tokens``.
    """
    return -(-len(text) // CHARS_PER_TOKEN)


def count_message_tokens(message: Mapping[str, Any]) -> int:
    """Tokens of one chat message: its content, name and tool calls plus a fixed overhead.

    List content counts the text of ``text`` parts; any other part (an image, a file)
    counts its JSON, which keeps it deterministic without pretending to know its real size.
    """
    tokens = MESSAGE_OVERHEAD_TOKENS
    content = message.get("content")
    if isinstance(content, str):
        tokens += count_tokens(content)
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, Mapping) else None
            tokens += count_tokens(text) if isinstance(text, str) else _json_tokens(part)
    name = message.get("name")
    if isinstance(name, str):
        tokens += count_tokens(name)
    if "tool_calls" in message:
        tokens += _json_tokens(message["tool_calls"])
    return tokens


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of a chat-completion request: tools, every message and reply priming.

    ``body["messages"]`` must be a list of message dicts (the gateway validates it first).
    """
    tokens = REPLY_PRIMING_TOKENS
    if "tools" in body:
        tokens += _json_tokens(body["tools"])
    messages: list[Mapping[str, Any]] = body["messages"]
    return tokens + sum(count_message_tokens(message) for message in messages)


def _json_tokens(value: object) -> int:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return 0
    return count_tokens(text.decode())

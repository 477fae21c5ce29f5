"""The OpenAI client's own types as the reference for what limpet hands out.

Every raw completion and chunk limpet produces (live, hit, coalesced, replayed,
assembled) must parse as ``openai``'s ``ChatCompletion`` / ``ChatCompletionChunk``, and
parse without losing or coercing a field (the models keep unknown fields, so
OpenRouter's ``provider``, ``native_finish_reason`` and ``reasoning`` count too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

__all__ = ["assert_chat_completion", "assert_chat_completion_chunk", "assert_chunks"]


def assert_chat_completion(raw: Mapping[str, Any]) -> ChatCompletion:
    """``raw`` is a chat completion, every field kept as it is; returns the parsed one."""
    parsed = ChatCompletion.model_validate(raw)
    _assert_kept(parsed, raw)
    return parsed


def assert_chat_completion_chunk(raw: Mapping[str, Any]) -> ChatCompletionChunk:
    """``raw`` is a chat completion chunk, every field kept as it is."""
    parsed = ChatCompletionChunk.model_validate(raw)
    _assert_kept(parsed, raw)
    return parsed


def assert_chunks(raws: Iterable[Mapping[str, Any]]) -> list[ChatCompletionChunk]:
    """Every one of ``raws`` is a chat completion chunk."""
    return [assert_chat_completion_chunk(raw) for raw in raws]


def _assert_kept(parsed: BaseModel, raw: Mapping[str, Any]) -> None:
    dumped = parsed.model_dump(mode="json", exclude_unset=True)
    assert dumped == raw, f"parsing changed it:\n{dumped}\n!=\n{raw}"

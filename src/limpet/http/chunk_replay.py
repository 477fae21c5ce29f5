"""Replay of a stored answer as stream chunks: the live stream's own, when its chunking
was kept, else chunks shaped like a live stream's. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import zip_longest
from typing import Any

from limpet.cache.base import stored_chunks
from limpet.http.chunks import REPLACED_FIELDS, choice_indexes
from limpet.models import json_copy

#: Characters of content per synthesized chunk when replaying a never-streamed answer.
REPLAY_PIECE_CHARS = 24

# Replay order of message fields: what a model streams first comes first. The reasoning
# (OpenRouter's ``reasoning``, DeepSeek's ``reasoning_content``, then the details), the
# answer (``content``, ``refusal``, ...), the tool calls.
_REPLAY_ORDER = {"reasoning": 0, "reasoning_content": 0, "reasoning_details": 1, "tool_calls": 3}


def replay_chunks(body: Mapping[str, Any], chunking: bytes | None) -> Iterator[dict[str, Any]]:
    """The chunks of a stored answer: the live stream's when ``chunking`` was kept, else
    chunks shaped like a live stream's, every choice interleaved, then the usage.

    Raises:
        CacheCorruptError: ``chunking`` does not decode to a stream (checked before the
            first chunk), so a caller can count it and go upstream instead.
    """
    if chunking is not None:
        yield from stored_chunks(chunking)
        return
    # ``body`` is the entry every caller of it shares: the chunks, which the reader may
    # change, must hold none of its dicts or lists.
    yield from _synthesize(json_copy(body))


def _synthesize(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Chunks that assemble back to ``body``: per choice its role, text in pieces (each
    with its share of the logprobs), other fields, then its finish; choices interleave
    as in a live ``n > 1`` stream; a usage-only chunk (``choices: []``) ends it."""
    envelope = {k: v for k, v in body.items() if k not in ("choices", "usage")}
    envelope["object"] = "chat.completion.chunk"
    choices = body.get("choices") or []
    # By position only where no choice is numbered; such an answer in part is never
    # stored (``every_choice_finished``), so read as numbered then.
    indexes = choice_indexes(choices) or [c.get("index", 0) for c in choices]
    per_choice = [
        _choice_chunks(choice, index) for index, choice in zip(indexes, choices, strict=True)
    ]
    for round_ in zip_longest(*per_choice):
        for choice in round_:
            if choice is not None:
                yield {**envelope, "choices": [choice]}
    if body.get("usage") is not None:
        yield {**envelope, "choices": [], "usage": body["usage"]}


def _choice_chunks(choice: Mapping[str, Any], index: int) -> Iterator[dict[str, Any]]:
    message: Mapping[str, Any] = choice.get("message") or {}
    logprobs = choice.get("logprobs")
    tokens = (
        {k: v for k, v in logprobs.items() if isinstance(v, list)}
        if isinstance(logprobs, dict)
        else {}
    )
    opening: dict[str, Any] = {"role": message.get("role") or "assistant"}
    later: list[tuple[str, Any]] = []  # sent after the opening, a piece at a time
    for key, value in sorted(message.items(), key=lambda item: _REPLAY_ORDER.get(item[0], 2)):
        if key == "role":
            continue
        if isinstance(value, list | dict | str) and value and key not in REPLACED_FIELDS:
            later.append((key, value))
            if key == "content":
                opening["content"] = ""  # as a live stream opens
        else:
            opening[key] = value
    if isinstance(logprobs, dict):  # its lists are filled piece by piece
        logprobs = {k: [] if isinstance(v, list) else v for k, v in logprobs.items()}
    yield _piece(index, opening, logprobs)
    for key, value in later:
        if isinstance(value, str):
            yield from _text_pieces(index, key, value, tokens.pop(key, None))
        elif key == "tool_calls" and isinstance(value, list):
            # Numbered by place: an index of the call's own (some servers write 0 for
            # every call of a plain answer) would merge the calls when assembled.
            yield from (_piece(index, {key: [{**c, "index": i}]}) for i, c in enumerate(value))
        else:
            yield _piece(index, {key: value})
    for key, rest in tokens.items():  # logprobs of a text that is empty or absent
        if rest:
            yield _piece(index, {}, {key: rest})
    ending = {k: v for k, v in choice.items() if k not in ("index", "message", "logprobs")}
    yield {"index": index, "delta": {}, "finish_reason": None, **ending}


def _text_pieces(
    index: int, key: str, text: str, tokens: list[Any] | None
) -> Iterator[dict[str, Any]]:
    starts = range(0, len(text), REPLAY_PIECE_CHARS)
    for number, start in enumerate(starts):
        delta = {key: text[start : start + REPLAY_PIECE_CHARS]}
        if tokens is None:
            yield _piece(index, delta)
        else:
            share = slice(
                number * len(tokens) // len(starts), (number + 1) * len(tokens) // len(starts)
            )
            yield _piece(index, delta, {key: tokens[share]})


def _piece(index: int, delta: dict[str, Any], logprobs: Any = None) -> dict[str, Any]:
    """One choice of a synthesized chunk, without a finish."""
    return {"index": index, "delta": delta, "finish_reason": None, "logprobs": logprobs}

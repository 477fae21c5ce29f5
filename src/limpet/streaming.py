"""Streamed chat completions: chunks, their assembly into one completion, and replay. Pure.

A stream is stored as the completion it assembles to (so ``stream=True`` and
``stream=False`` share one cache entry) plus how it was chunked: the first chunk's
envelope (id, model, created, ...) once, then each chunk's remaining fields. Replaying
that gives back the live stream's chunks. A completion that was never streamed is
replayed in chunks shaped like a live stream's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from limpet.cache.base import stored_chunks
from limpet.errors import APIStreamError

__all__ = ["StreamAssembler", "StreamChunk", "replay_chunks", "stream_error"]

#: Characters of content per synthesized chunk when replaying a never-streamed answer.
REPLAY_PIECE_CHARS = 24

_ENVELOPE_FIELDS = ("id", "object", "created", "model", "provider", "system_fingerprint")


@dataclass(slots=True)
class StreamChunk:
    """One chunk of a streamed completion.

    Attributes:
        raw: the chunk as received (or, on a replay, as it was received then).
    """

    raw: dict[str, Any]

    @property
    def delta(self) -> dict[str, Any]:
        """The first choice's delta, or ``{}`` (a usage-only chunk has none)."""
        choices = self.raw.get("choices")
        if choices and isinstance(choices[0], dict):
            delta = choices[0].get("delta")
            if isinstance(delta, dict):
                return delta
        return {}

    @property
    def content(self) -> str | None:
        """This chunk's text delta, or None."""
        content = self.delta.get("content")
        return content if isinstance(content, str) and content else None

    @property
    def reasoning(self) -> str | None:
        """This chunk's reasoning delta, or None."""
        reasoning = self.delta.get("reasoning")
        return reasoning if isinstance(reasoning, str) and reasoning else None

    @property
    def finish_reason(self) -> str | None:
        choices = self.raw.get("choices")
        if choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            return reason if isinstance(reason, str) else None
        return None


def stream_error(chunk: Mapping[str, Any], endpoint: str | None = None) -> APIStreamError | None:
    """The error an OpenRouter mid-stream error chunk reports, or None for a normal chunk.

    Such a chunk arrives inside an HTTP 200 stream: ``{"error": {"code", "message"},
    "choices": [{"finish_reason": "error", ...}]}``.
    """
    error = chunk.get("error")
    choices = chunk.get("choices")
    finished_in_error = bool(
        choices and isinstance(choices[0], dict) and choices[0].get("finish_reason") == "error"
    )
    if error is None and not finished_in_error:
        return None
    message = "the upstream stream failed"
    code: int | None = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) else None
    return APIStreamError(message, status_code=code, endpoint=endpoint)


class StreamAssembler:
    """Collects chunks and builds the chat completion they add up to."""

    __slots__ = ("_chunks", "_envelope")

    def __init__(self) -> None:
        self._envelope: dict[str, Any] | None = None
        self._chunks: list[dict[str, Any]] = []

    def add(self, chunk: dict[str, Any]) -> None:
        if self._envelope is None:
            self._envelope = {k: chunk[k] for k in _ENVELOPE_FIELDS if k in chunk}
        envelope = self._envelope
        self._chunks.append({k: v for k, v in chunk.items() if envelope.get(k, _MISSING) != v})

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    def chunking(self) -> bytes:
        """How the stream was chunked, for ``replay_chunks``."""
        return orjson.dumps({"envelope": self._envelope or {}, "chunks": self._chunks})

    def completion(self) -> dict[str, Any]:
        """The chat completion body these chunks add up to (``object: chat.completion``)."""
        envelope = dict(self._envelope or {})
        role = "assistant"
        content: list[str] = []
        reasoning: list[str] = []
        tool_calls: dict[int, dict[str, Any]] = {}
        finish_reason: str | None = None
        native_finish_reason: str | None = None
        usage: Any = None
        for chunk in self._chunks:
            if "usage" in chunk and chunk["usage"] is not None:
                usage = chunk["usage"]
            choices = chunk.get("choices") or ()
            for choice in choices[:1]:
                delta = choice.get("delta") or {}
                role = delta.get("role") or role
                if isinstance(delta.get("content"), str):
                    content.append(delta["content"])
                if isinstance(delta.get("reasoning"), str):
                    reasoning.append(delta["reasoning"])
                for call in delta.get("tool_calls") or ():
                    _merge_tool_call(tool_calls, call)
                finish_reason = choice.get("finish_reason") or finish_reason
                native_finish_reason = choice.get("native_finish_reason") or native_finish_reason
        message: dict[str, Any] = {"role": role, "content": "".join(content) if content else None}
        if reasoning:
            message["reasoning"] = "".join(reasoning)
        if tool_calls:
            message["tool_calls"] = [tool_calls[i] for i in sorted(tool_calls)]
        choice_out: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
        }
        if native_finish_reason is not None:
            choice_out["native_finish_reason"] = native_finish_reason
        body = {**envelope, "object": "chat.completion", "choices": [choice_out]}
        if usage is not None:
            body["usage"] = usage
        return body


def replay_chunks(body: Mapping[str, Any], chunking: bytes | None) -> Iterator[dict[str, Any]]:
    """The chunks of a stored answer: the live stream's when ``chunking`` was kept, else
    chunks shaped like a live stream (role, reasoning, content, tool calls, finish, usage).

    Raises:
        CacheCorruptError: ``chunking`` does not decode to a stream (checked before the
            first chunk), so a caller can count it and go upstream instead.
    """
    if chunking is not None:
        yield from stored_chunks(chunking)
        return
    yield from _synthesize(body)


def _synthesize(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    envelope = {k: body[k] for k in _ENVELOPE_FIELDS if k in body}
    envelope["object"] = "chat.completion.chunk"
    choice = body["choices"][0]
    message = choice.get("message") or {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**envelope, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    yield chunk({"role": message.get("role") or "assistant", "content": ""})
    for field in ("reasoning", "content"):
        text = message.get(field)
        if isinstance(text, str):
            for start in range(0, len(text), REPLAY_PIECE_CHARS):
                yield chunk({field: text[start : start + REPLAY_PIECE_CHARS]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    yield chunk({}, choice.get("finish_reason") or "stop")
    if body.get("usage") is not None:
        yield {**envelope, "choices": [], "usage": body["usage"]}


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: Mapping[str, Any]) -> None:
    index = delta.get("index", len(calls))
    call = calls.setdefault(index, {"id": None, "type": "function", "function": {}})
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    target = call["function"]
    for name in ("name", "arguments"):
        if isinstance(function.get(name), str):
            target[name] = target.get(name, "") + function[name]


_MISSING = object()

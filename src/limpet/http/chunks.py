"""Streamed chat completions: chunks, their assembly into one completion, and replay. Pure.

A stream is stored as the completion it assembles to (so ``stream=True`` and
``stream=False`` share one cache entry) plus how it was chunked: the first chunk's
envelope (id, model, created, ...) once, then each chunk's remaining fields. Replaying
that gives back the live stream's chunks. A completion that was never streamed is
replayed in chunks shaped like a live stream's.

Assembly keeps every choice (by ``index``) and every field of its deltas: text fields
(``content``, ``reasoning``, ``refusal``, ...) concatenate, tool calls and
``reasoning_details`` merge by their ``index``, other lists (``annotations``) extend;
per choice, ``logprobs`` lists extend and ``finish_reason`` (and any other choice field,
such as OpenRouter's ``native_finish_reason``) keeps its last value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import orjson

from limpet.cache.base import stored_chunks
from limpet.errors import APIStreamError

__all__ = [
    "StreamAssembler",
    "StreamChunk",
    "replay_chunks",
    "stream_error",
    "with_stream_usage",
]

#: Characters of content per synthesized chunk when replaying a never-streamed answer.
REPLAY_PIECE_CHARS = 24

_ENVELOPE_FIELDS = ("id", "object", "created", "model", "provider", "system_fingerprint")

# String fields that name or identify a thing: a later delta repeats them, never extends them.
_REPLACED = frozenset({"role", "id", "type", "format", "signature"})
# Lists whose items are the deltas of items of their own, matched by their ``index``.
_INDEXED = frozenset({"tool_calls", "reasoning_details"})
# Replay order of message fields: what a model streams first comes first.
_REPLAY_ORDER = {"reasoning": 0, "reasoning_details": 1, "tool_calls": 3}


@dataclass(slots=True)
class StreamChunk:
    """One chunk of a streamed completion.

    Attributes:
        raw: the chunk as received (or, on a replay, as it was received then).
    """

    raw: dict[str, Any]

    @property
    def index(self) -> int | None:
        """The index of the choice this chunk carries (with ``n`` > 1, chunks of the
        choices take turns), or None for a usage-only chunk."""
        choices = self.raw.get("choices")
        if choices and isinstance(choices[0], dict):
            index = choices[0].get("index", 0)
            return index if isinstance(index, int) else None
        return None

    @property
    def delta(self) -> dict[str, Any]:
        """The delta of the chunk's (first) choice, or ``{}`` (a usage-only chunk has none)."""
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
    failed = next(
        (
            choice
            for choice in (choices if isinstance(choices, list) else ())
            if isinstance(choice, dict) and choice.get("finish_reason") == "error"
        ),
        None,
    )
    if error is None and failed is None:
        return None
    if error is None and failed is not None:
        error = failed.get("error")  # any choice of an n > 1 stream may be the one that failed
    message = "the upstream stream failed"
    code: int | None = None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) else None
    return APIStreamError(message, status_code=code, endpoint=endpoint)


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` asking for usage in the stream (``stream_options.include_usage``), as
    OpenAI-style servers send none otherwise; a caller's own ``include_usage`` is kept.

    Only what is sent changes: ``stream_options`` never enters the cache key.
    """
    options = body.get("stream_options")
    if options is None:
        return {**body, "stream_options": {"include_usage": True}}
    if isinstance(options, dict) and "include_usage" not in options:
        return {**body, "stream_options": {**options, "include_usage": True}}
    return dict(body)


class StreamAssembler:
    """Collects chunks and builds the chat completion they add up to.

    Args:
        chunking: also keep how the stream was chunked, for ``chunking()`` (a stored
            answer's replay); a stream that is not stored need not hold its chunks.
    """

    __slots__ = ("_choices", "_chunks", "_count", "_envelope", "_top", "_usage")

    def __init__(self, *, chunking: bool = True) -> None:
        self._envelope: dict[str, Any] | None = None
        self._chunks: list[dict[str, Any]] | None = [] if chunking else None
        self._count = 0
        self._top: dict[str, Any] = {}
        self._usage: Any = None
        self._choices: dict[int, _Choice] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self._count += 1
        if self._envelope is None:
            self._envelope = {k: chunk[k] for k in _ENVELOPE_FIELDS if k in chunk}
        if self._chunks is not None:
            envelope = self._envelope
            self._chunks.append({k: v for k, v in chunk.items() if envelope.get(k, _MISSING) != v})
        top = self._top
        for key, value in chunk.items():
            if key == "choices":
                for choice in value or ():
                    if isinstance(choice, dict):
                        self._choice(choice.get("index", 0)).add(choice)
            elif key == "usage":
                self._usage = value if value is not None else self._usage
            elif value is not None or key not in top:
                top[key] = value

    @property
    def chunks(self) -> int:
        """How many chunks were added."""
        return self._count

    def chunking(self) -> bytes | None:
        """How the stream was chunked, for ``replay_chunks``; None when not kept."""
        if self._chunks is None:
            return None
        return orjson.dumps({"envelope": self._envelope or {}, "chunks": self._chunks})

    def completion(self) -> dict[str, Any]:
        """The chat completion body these chunks add up to (``object: chat.completion``)."""
        choices = [self._choices[index].value(index) for index in sorted(self._choices)]
        body = {**self._top, "object": "chat.completion", "choices": choices}
        if not choices:  # a stream that ended before any choice: still one (empty) choice
            body["choices"] = [_Choice().value(0)]
        if self._usage is not None:
            body["usage"] = self._usage
        return body

    def _choice(self, index: int) -> _Choice:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
        return state


class _Choice:
    """One choice's deltas so far."""

    __slots__ = ("fields", "logprobs", "message", "role")

    def __init__(self) -> None:
        self.role = "assistant"
        self.message = _Merged()
        self.logprobs: _Merged | None = None
        # Present in every choice of a whole answer, as OpenAI's are.
        self.fields: dict[str, Any] = {"finish_reason": None, "logprobs": None}

    def add(self, choice: Mapping[str, Any]) -> None:
        fields = self.fields
        for key, value in choice.items():
            if key == "delta":
                if isinstance(value, dict):
                    self.role = value.get("role") or self.role
                    self.message.add(value)
            elif key == "logprobs":
                if isinstance(value, dict):
                    self.logprobs = self.logprobs or _Merged()
                    self.logprobs.add(value)
            elif key != "index" and (value is not None or key not in fields):
                fields[key] = value

    def value(self, index: int) -> dict[str, Any]:
        message = {"content": None, **self.message.value(), "role": self.role}
        choice = {"index": index, "message": message, **self.fields}
        if self.logprobs is not None:
            choice["logprobs"] = self.logprobs.value()
        return choice


class _Text(list[str]):
    """The pieces of a text field, joined once at the end (a long answer has many)."""

    __slots__ = ()


class _Merged:
    """An object merged from its deltas: strings concatenate (names and ids replace),
    dicts merge, lists extend (``_INDEXED`` lists merge items by ``index``); ``None``
    only fills a field not seen yet."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}

    def add(self, delta: Mapping[str, Any]) -> None:
        fields = self._fields
        for key, value in delta.items():
            current = fields.get(key)
            if isinstance(value, str) and key not in _REPLACED:
                if isinstance(current, _Text):
                    current.append(value)
                else:
                    fields[key] = _Text([value])
            elif isinstance(value, dict):
                if not isinstance(current, _Merged):
                    current = fields[key] = _Merged()
                current.add(value)
            elif isinstance(value, list):
                if not isinstance(current, _Items):
                    current = fields[key] = _Items(key)
                current.extend(value)
            elif value is not None or key not in fields:
                fields[key] = value

    def value(self) -> dict[str, Any]:
        return {key: _value(field) for key, field in self._fields.items()}


class _Items:
    """A list field's items; in an ``_INDEXED`` list, deltas with one ``index`` (and, for
    ``reasoning_details``, one ``type``) are one item."""

    __slots__ = ("_by_key", "_items", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._items: list[Any] = []
        self._by_key: dict[object, _Merged] = {}

    def extend(self, values: list[Any]) -> None:
        for value in values:
            index = value.get("index") if isinstance(value, dict) else None
            if self._name not in _INDEXED or not isinstance(index, int):
                self._items.append(value)
                continue
            key = (index, value.get("type")) if self._name == "reasoning_details" else index
            item = self._by_key.get(key)
            if item is None:
                item = self._by_key[key] = _Merged()
                self._items.append(item)
            item.add(value)

    def value(self) -> list[Any]:
        values = [_value(item) for item in self._items]
        if self._name == "tool_calls":
            # A whole answer's tool calls carry no stream index; the list order is theirs.
            values = [
                {"type": "function", **{k: v for k, v in call.items() if k != "index"}}
                if isinstance(call, dict)
                else call
                for call in values
            ]
        return values


def _value(field: Any) -> Any:
    if isinstance(field, _Text):
        return "".join(field)
    if isinstance(field, _Merged | _Items):
        return field.value()
    return field


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
    yield from _synthesize(body)


def _synthesize(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Chunks that assemble back to ``body``: per choice its role, text in pieces (each
    with its share of the logprobs), other fields, then its finish; choices interleave
    as in a live ``n > 1`` stream; a usage-only chunk (``choices: []``) ends it."""
    envelope = {k: v for k, v in body.items() if k not in ("choices", "usage")}
    envelope["object"] = "chat.completion.chunk"
    per_choice = [_choice_chunks(choice) for choice in body.get("choices") or ()]
    for round_ in zip_longest(*per_choice):
        for choice in round_:
            if choice is not None:
                yield {**envelope, "choices": [choice]}
    if body.get("usage") is not None:
        yield {**envelope, "choices": [], "usage": body["usage"]}


def _choice_chunks(choice: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    index = choice.get("index", 0)
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
        if isinstance(value, list | dict | str) and value and key not in _REPLACED:
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
            yield from (_piece(index, {key: [{"index": i, **c}]}) for i, c in enumerate(value))
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


_MISSING = object()

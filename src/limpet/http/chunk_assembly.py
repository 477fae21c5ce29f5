"""Assembly of a stream's chunks into the one chat completion they add up to. Pure.

Assembly keeps every choice (by ``index``) and every field of its deltas: text fields
(``content``, ``reasoning``, ``refusal``, ...) concatenate, tool calls and
``reasoning_details`` merge by their ``index``, other lists (``annotations``) extend;
per choice, ``logprobs`` lists extend and ``finish_reason`` (and any other choice field,
such as OpenRouter's ``native_finish_reason``) keeps its last value. Fields only a stream
has (OpenAI's ``obfuscation`` padding) stay in the chunks, out of the completion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from limpet.http.chunks import REPLACED_FIELDS

_ENVELOPE_FIELDS = ("id", "object", "created", "model", "provider", "system_fingerprint")

# Top-level chunk fields that belong to the stream alone: OpenAI pads each chunk with
# random ``obfuscation`` text (``stream_options.include_obfuscation``).
_STREAM_ONLY_FIELDS = frozenset({"obfuscation"})

# Lists whose items are the deltas of items of their own, matched by their ``index``.
_INDEXED = frozenset({"tool_calls", "reasoning_details"})

_MISSING = object()


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
        """Add the next chunk of the stream (kept as it is, when keeping the chunking:
        nobody may change it after)."""
        self._count += 1
        if self._chunks is not None:
            self._chunks.append(chunk)
            self._narrow_envelope(chunk)
        top = self._top
        for key, value in chunk.items():
            if key == "choices":
                for choice in value or ():
                    if isinstance(choice, dict):
                        self._choice(choice.get("index", 0)).add(choice)
            elif key == "usage":
                self._usage = value if value is not None else self._usage
            elif key not in _STREAM_ONLY_FIELDS and (value is not None or key not in top):
                top[key] = value

    @property
    def chunks(self) -> int:
        """How many chunks were added."""
        return self._count

    def chunking(self) -> bytes | None:
        """How the stream was chunked, for ``replay_chunks``; None when not kept.

        The envelope is what every chunk carries alike, so each chunk is stored with
        only the rest, and ``{**envelope, **chunk}`` gives back each live chunk exactly:
        a field some chunks lack (OpenAI's ``system_fingerprint`` on the first chunk
        only) stays in the chunks that had it.
        """
        if self._chunks is None:
            return None
        envelope = self._envelope or {}
        chunks = [{k: v for k, v in chunk.items() if k not in envelope} for chunk in self._chunks]
        return orjson.dumps({"envelope": envelope, "chunks": chunks})

    @property
    def choices(self) -> int:
        """How many choices the chunks carried."""
        return len(self._choices)

    def unfinished(self, n: int = 1) -> list[int]:
        """The indexes of the choices ``0..n-1`` that no ``finish_reason`` ended (never
        streamed, or cut short: a stream may end with ``[DONE]`` before it is whole),
        and of any other choice the chunks carried that none ended (more were asked for
        than the request said: an endpoint's ``extra_body``). A stream is whole only
        when there are none."""
        choices = self._choices
        missing = [i for i in range(n) if i not in choices or not choices[i].finished]
        return missing + sorted(i for i, c in choices.items() if i >= n and not c.finished)

    def completion(self) -> dict[str, Any]:
        """The chat completion body these chunks add up to (``object: chat.completion``):
        the choices they carried, none made up (no choice: ``choices`` is empty)."""
        choices = [self._choices[index].value(index) for index in sorted(self._choices)]
        body = {**self._top, "object": "chat.completion", "choices": choices}
        if self._usage is not None:
            body["usage"] = self._usage
        return body

    def _narrow_envelope(self, chunk: dict[str, Any]) -> None:
        """Keep in the envelope only the fields every chunk so far has, with one value."""
        envelope = self._envelope
        if envelope is None:
            self._envelope = {k: chunk[k] for k in _ENVELOPE_FIELDS if k in chunk}
            return
        for key in [k for k, v in envelope.items() if chunk.get(k, _MISSING) != v]:
            del envelope[key]

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

    @property
    def finished(self) -> bool:
        """Whether a ``finish_reason`` ended the choice (Ollama's ``""`` is none)."""
        reason = self.fields["finish_reason"]
        return isinstance(reason, str) and bool(reason)

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
            if isinstance(value, str) and key not in REPLACED_FIELDS:
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

"""Streamed chat completions: the chunk, and what one chunk or request says. Pure.

A stream is stored as the completion it assembles to (so ``stream=True`` and
``stream=False`` share one cache entry) plus how it was chunked: the envelope fields
(id, model, created, ...) every chunk shares once, then each chunk's remaining fields.
Replaying that gives back the live stream's chunks, each with exactly its own fields. A
completion that was never streamed is replayed in chunks shaped like a live stream's.
Assembly is in ``limpet.http.chunk_assembly``, replay in ``limpet.http.chunk_replay``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limpet.errors import APIStreamError

#: String fields that name or identify a thing: a later delta repeats them, never extends
#: them (assembly keeps the last; replay sends them whole).
REPLACED_FIELDS = frozenset({"role", "id", "type", "format", "signature"})


@dataclass(slots=True)
class StreamChunk:
    """One chunk of a streamed completion.

    Attributes:
        raw: the chunk as received (or, on a replay, as it was received then); this
            reader's own, so changing it changes nothing another reader or the cache holds.
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
    usage = chunk.get("usage")  # paid for: what the account stage needs to price it
    billed = {"model": chunk.get("model"), "usage": usage} if isinstance(usage, dict) else None
    return APIStreamError(message, status_code=code, endpoint=endpoint, billed=billed)


def choices_asked(body: Mapping[str, Any]) -> int:
    """How many choices ``body`` asks for (``n``, 1 when absent): a stream is whole only
    when each of them finished."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def choices_sent(body: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> int:
    """``choices_asked`` of what goes upstream: ``body`` over the answering endpoint's
    ``extra_body`` (which may ask for more choices than the caller did)."""
    if extra_body is None or "n" in body or "n" not in extra_body:
        return choices_asked(body)
    return choices_asked(extra_body)


def every_choice_finished(answer: Mapping[str, Any], asked: int) -> bool:
    """Whether the chat completion ``answer`` holds each of the ``asked`` choices
    (indexes ``0..asked-1``) and every choice it holds has a ``finish_reason``: only such
    an answer may be stored, whichever wire it came by (``StreamAssembler.unfinished``
    says the same of chunks). A provider that ignores ``n`` gives one choice: served to
    its caller, never to another asking for ``n``."""
    choices = answer.get("choices")
    if type(choices) is not list:
        return False
    indexes = choice_indexes(choices)
    if indexes is None or len(set(indexes)) != len(indexes):
        return False  # numbered in part, or twice: which choice is which is unknown
    if not all(type(choice) is dict and choice.get("finish_reason") for choice in choices):
        return False
    return all(index in indexes for index in range(asked))


def choice_indexes(choices: list[Any]) -> list[Any] | None:
    """Each choice's ``index``: as numbered, or by position when none is numbered (a
    server that numbers none); None when only some are (no way to tell them apart)."""
    numbered = [type(c) is dict and "index" in c for c in choices]
    if all(numbered):
        return [choice["index"] for choice in choices]
    if not any(numbered):
        return list(range(len(choices)))
    return None


def finished_choices(chunk: Mapping[str, Any], asked: int) -> set[int]:
    """The choices among the ``asked`` (indexes ``0..asked-1``) that ``chunk`` finishes:
    those with a ``finish_reason`` (Ollama's ``""`` is none, as assembly reads it)."""
    return {
        index
        for choice in chunk.get("choices") or ()
        if choice.get("finish_reason")
        and type(index := choice.get("index", 0)) is int
        and 0 <= index < asked
    }


class Finishes:
    """Which of the ``asked`` choices the chunks a reader got so far finished: once
    ``whole``, the reader has every choice's answer (at most the usage chunk and
    ``[DONE]`` are left), so a reader that stops there stopped at the end."""

    __slots__ = ("_asked", "_finished")

    def __init__(self, asked: int) -> None:
        self._asked = asked
        self._finished: set[int] = set()

    def see(self, chunk: Mapping[str, Any]) -> None:
        """Note a chunk the reader got."""
        if len(self._finished) < self._asked:
            self._finished |= finished_choices(chunk, self._asked)

    @property
    def whole(self) -> bool:
        """Whether every choice asked for finished."""
        return len(self._finished) == self._asked


def with_stream_usage(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` asking for usage in the stream (``stream_options.include_usage: true``),
    as OpenAI-style servers send none otherwise, whatever the caller said: the answer is
    stored for every later caller, who may want it. A caller who declined does not get
    it (``usage_declined``, ``without_usage``); its other options are kept.

    Only what is sent changes: ``stream_options`` never enters the cache key.
    """
    options = body.get("stream_options")
    kept = options if isinstance(options, dict) else {}
    return {**body, "stream_options": {**kept, "include_usage": True}}


def usage_declined(body: Mapping[str, Any]) -> bool:
    """Whether the caller of ``body`` declined usage in its stream
    (``stream_options.include_usage: false``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is False


def without_usage(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """``chunk`` as a caller who declined usage gets it, as OpenAI would have streamed it:
    None for the usage-only chunk (no choices), else without its ``usage`` field (OpenAI
    sends ``usage: null`` on every other chunk once usage is asked for)."""
    if "usage" not in chunk:
        return chunk
    if not chunk.get("choices") and chunk["usage"] is not None:
        return None
    return {key: value for key, value in chunk.items() if key != "usage"}

"""Usage dialects → ``Usage``. Pure, and never raises: a missing or odd field counts as 0,
but a usage without a usable prompt count (nor a gateway's cost) is not ``reported``.

Every provider counts the same things differently. What ``prompt`` means is the trap:

==================  ======================================  ===================================
dialect             fields                                  input total
==================  ======================================  ===================================
OpenAI/OpenRouter,  ``prompt_tokens``, ``prompt_tokens_     ``prompt_tokens`` (cached and
xAI, Groq           details.{cached_tokens,                 written tokens included)
                    cache_write_tokens}``
OpenAI Responses    ``input_tokens``, ``input_tokens_       ``input_tokens`` (cached included)
                    details.cached_tokens``
Anthropic           ``input_tokens``, ``cache_read_input_   ``input + read + creation``: its
                    tokens``, ``cache_creation_input_       ``input_tokens`` EXCLUDES both
                    tokens``, ``cache_creation.ephemeral_
                    {5m,1h}_input_tokens``
DeepSeek            ``prompt_cache_hit_tokens``,            ``prompt_tokens`` = hit + miss
                    ``prompt_cache_miss_tokens``
Gemini native       ``usageMetadata.{promptTokenCount,      ``promptTokenCount`` (cached
                    cachedContentTokenCount, ...}``         INCLUDED) + tool-use prompt
==================  ======================================  ===================================

Audio is counted inside those totals, and its share said apart where the dialect does:
OpenAI's ``prompt_tokens_details.audio_tokens`` and ``completion_tokens_details.
audio_tokens``, Gemini's ``promptTokensDetails``, ``cacheTokensDetails`` and
``candidatesTokensDetails`` (token counts by modality). It is priced apart from text.

Output: xAI reports ``reasoning_tokens`` beside ``completion_tokens`` rather than inside it
(its ``total_tokens`` says so), and Gemini's ``candidatesTokenCount`` leaves out
``thoughtsTokenCount``; both are folded in, so ``completion_tokens`` is always every output
token. The buckets are clamped so that uncached + cached + cache write = prompt even when a
provider reports inconsistent numbers.

A stream reports usage piecemeal: OpenAI-style in one late chunk (xAI sometimes in a chunk
before the last), Groq under ``x_groq.usage``, Anthropic in ``message_start`` then as
cumulative counts in ``message_delta``, Gemini as cumulative ``usageMetadata`` on every
chunk. ``StreamUsage`` merges them, later counts replacing earlier ones (never adding), so a
streamed call normalises exactly as the same call unstreamed.

Example:
    >>> u = normalize_usage({"input_tokens": 50, "cache_read_input_tokens": 1000,
    ...                      "cache_creation_input_tokens": 200, "output_tokens": 20})
    >>> u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.uncached_tokens
    (1250, 1000, 200, 50)
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeGuard

from limpet.models import Usage

__all__ = [
    "MAX_TOKENS",
    "StreamUsage",
    "UsageDialect",
    "detect_dialect",
    "has_usage",
    "normalize_usage",
    "parse_usage",
    "raw_usage",
    "reported_cost",
    "response_usage",
    "with_write_ttl",
]


class UsageDialect(enum.StrEnum):
    """How a provider spells its token counts."""

    OPENAI = "openai"
    """Chat Completions: OpenAI, OpenRouter, xAI, Groq, Gemini's OpenAI-compatible API."""
    OPENAI_RESPONSES = "openai-responses"
    """OpenAI's Responses API: ``input_tokens`` that include cached tokens."""
    ANTHROPIC = "anthropic"
    """Anthropic's Messages API: ``input_tokens`` that exclude cache reads and writes."""
    DEEPSEEK = "deepseek"
    """DeepSeek: ``prompt_cache_hit_tokens`` and ``prompt_cache_miss_tokens``."""
    GEMINI = "gemini"
    """Gemini's native ``usageMetadata``."""


_GEMINI_KEYS = frozenset(
    {"promptTokenCount", "candidatesTokenCount", "cachedContentTokenCount", "totalTokenCount"}
)
_ANTHROPIC_KEYS = frozenset(
    {"cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation"}
)
_DEEPSEEK_KEYS = frozenset({"prompt_cache_hit_tokens", "prompt_cache_miss_tokens"})
# A usage object with none of these and a ``prompt_tokens`` is in OpenAI's dialect.
_NOT_OPENAI_KEYS = _GEMINI_KEYS | _ANTHROPIC_KEYS | _DEEPSEEK_KEYS
#: The largest prompt or completion count read as one (2**53, what a float counts
#: exactly): past any call's, and within what a stored entry holds (u64). A larger one is
#: no count at all, and the usage it is in says nothing of the cost.
MAX_TOKENS = 2**53
# The widest int a float holds (``_dollars``).
_FLOAT_MAX = int(sys.float_info.max)


def detect_dialect(usage: Mapping[str, Any]) -> UsageDialect:
    """The dialect a usage object is written in, judged by the fields it carries.

    ``{"input_tokens", "output_tokens"}`` alone reads the same in Anthropic's dialect and
    the Responses API's (with no cache fields, both mean the same numbers). A
    ``prompt_tokens`` beside Anthropic's cache fields (LiteLLM's shape) is OpenAI's
    dialect: Anthropic's own has ``input_tokens`` instead, and reading such a mix as
    Anthropic's would lose its prompt and completion counts.
    """
    # isdisjoint iterates the usage object's keys in C: this runs on every upstream answer.
    if not _GEMINI_KEYS.isdisjoint(usage):
        return UsageDialect.GEMINI
    openai_prompt = "prompt_tokens" in usage
    if not openai_prompt and not _ANTHROPIC_KEYS.isdisjoint(usage):
        return UsageDialect.ANTHROPIC
    if not _DEEPSEEK_KEYS.isdisjoint(usage):
        return UsageDialect.DEEPSEEK
    if not openai_prompt and ("input_tokens" in usage or "output_tokens" in usage):
        if "input_tokens_details" in usage or "output_tokens_details" in usage:
            return UsageDialect.OPENAI_RESPONSES
        return UsageDialect.ANTHROPIC
    return UsageDialect.OPENAI


def normalize_usage(usage: object, dialect: UsageDialect | str | None = None) -> Usage:
    """One ``Usage`` from a provider's usage object; zeros with ``reported`` False when it
    does not report (see ``has_usage``).

    Args:
        usage: the ``usage`` object (``usageMetadata`` for Gemini), not the whole response;
            see ``response_usage`` for that.
        dialect: how to read it; detected from its fields when None.
    """
    if (
        dialect is None
        and type(usage) is dict
        and type(usage.get("prompt_tokens")) is int
        and usage["prompt_tokens"] >= 0
        and _NOT_OPENAI_KEYS.isdisjoint(usage)
    ):
        # The common answer, OpenAI's dialect with a usable prompt count (so it reports),
        # read without the general checks; ``detect_dialect`` would say the same.
        return _openai(usage)
    if type(usage) is not dict and not isinstance(usage, Mapping):  # dict: no ABC check
        return Usage(reported=False)
    kind = detect_dialect(usage) if dialect is None else UsageDialect(dialect)
    if not _reports(usage, kind):
        return Usage(reported=False)
    return _READERS[kind](usage)


def has_usage(
    usage: object, dialect: UsageDialect | str | None = None
) -> TypeGuard[Mapping[str, Any]]:
    """Whether a ``usage`` object reports what a call cost: a mapping whose dialect's
    prompt count is usable (a finite number >= 0), or with the gateway's own ``cost``.

    An absent (None) or empty one, one of only nulls (``{"prompt_tokens": null}``, as some
    providers send), or one with only a total or a completion count, means the cost is
    unknown, not zero: pricing its zeros would claim $0.

    Args:
        usage: the ``usage`` object (``usageMetadata`` for Gemini).
        dialect: how to read it; detected from its fields when None.
    """
    if type(usage) is not dict and not isinstance(usage, Mapping):  # dict: no ABC check
        return False
    return _reports(usage, detect_dialect(usage) if dialect is None else UsageDialect(dialect))


def parse_usage(usage: object) -> Usage:
    """Normalise a ``usage`` object of any dialect (detected); zeros with ``reported``
    False when it is absent or unusable.

    Kept for callers of the first version, which read only the OpenAI dialect; the OpenAI
    dialect reads exactly as it did.
    """
    return normalize_usage(usage)


def raw_usage(body: object) -> Mapping[str, Any] | None:
    """The usage object inside a response body or one stream chunk or event, or None.

    Looks in ``usage`` (OpenAI, Anthropic responses and ``message_delta``),
    ``usageMetadata`` (Gemini), ``message.usage`` (Anthropic ``message_start``),
    ``response.usage`` (Responses API events) and ``x_groq.usage`` (Groq streams).
    """
    if not isinstance(body, Mapping):
        return None
    for key in ("usage", "usageMetadata"):
        found = body.get(key)
        if isinstance(found, Mapping):
            return found
    for key in ("message", "response", "x_groq"):
        inner = body.get(key)
        if isinstance(inner, Mapping):
            found = inner.get("usage")
            if isinstance(found, Mapping):
                return found
    return None


def response_usage(body: object, dialect: UsageDialect | str | None = None) -> Usage:
    """``Usage`` of a whole response body in any dialect; not ``reported`` when it has
    none."""
    return normalize_usage(raw_usage(body), dialect)


class StreamUsage:
    """Collects the usage a stream reports across its chunks or events.

    Counts are merged field by field, a later count replacing an earlier one: every
    provider sends either one usage object or cumulative counts, so adding them up would
    count tokens twice (the Gemini and Anthropic stream bug peers shipped).

    Example:
        >>> acc = StreamUsage()
        >>> acc.feed({"type": "message_start", "message": {"usage": {
        ...     "input_tokens": 10, "cache_read_input_tokens": 2000, "output_tokens": 1}}})
        >>> acc.feed({"type": "message_delta", "usage": {"output_tokens": 42}})
        >>> acc.usage.prompt_tokens, acc.usage.completion_tokens
        (2010, 42)
    """

    __slots__ = ("_dialect", "_merged")

    def __init__(self, dialect: UsageDialect | str | None = None) -> None:
        self._dialect = dialect
        self._merged: dict[str, Any] | None = None

    def feed(self, chunk: object) -> None:
        """Take one parsed chunk or event; one without usage changes nothing."""
        found = raw_usage(chunk)
        if found is not None:
            self._merged = _merge(self._merged or {}, found)

    @property
    def raw(self) -> dict[str, Any] | None:
        """The merged usage object, or None when no chunk carried one."""
        return self._merged

    @property
    def usage(self) -> Usage:
        """The stream's usage so far."""
        return normalize_usage(self._merged, self._dialect)


def with_write_ttl(usage: Usage, ttl: str | None) -> Usage:
    """``usage`` with its cache writes attributed to ``ttl`` when its dialect did not split
    them (OpenRouter reports one ``cache_write_tokens`` total, whatever the TTL).

    For a request whose every breakpoint asked for one TTL (``prompt_cache.breakpoint_ttl``),
    every write has that TTL; a 1 h write costs more than a 5 min one, so pricing needs it.
    ``usage`` itself when there is nothing to attribute.
    """
    if ttl != "1h" or usage.cache_write_1h_tokens or not usage.cache_write_tokens:
        return usage
    return replace(usage, cache_write_1h_tokens=usage.cache_write_tokens)


def reported_cost(usage: object) -> float | None:
    """The gateway's own charge in USD (OpenRouter's ``usage.cost``), or None.

    With BYOK (``is_byok: true``) OpenRouter's ``cost`` is only its fee; the provider bills
    ``cost_details.upstream_inference_cost`` to the user's own key, so the two are added.
    """
    if type(usage) is not dict and not isinstance(usage, Mapping):  # dict: no ABC check
        return None
    cost = _dollars(usage.get("cost"))
    if cost is None:
        return None
    if usage.get("is_byok") is True:
        upstream = _dollars(_mapping(usage.get("cost_details")).get("upstream_inference_cost"))
        if upstream is not None:
            cost += upstream
    return cost


def _openai(usage: Mapping[str, Any]) -> Usage:
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = _mapping(usage.get("prompt_tokens_details"))
    completion_details = _mapping(usage.get("completion_tokens_details"))
    reasoning = _count(completion_details.get("reasoning_tokens"))
    total = usage.get("total_tokens")
    if reasoning and total == prompt + completion + reasoning and total != prompt + completion:
        # xAI: reasoning is reported beside completion_tokens, and total_tokens adds it.
        completion += reasoning
    cached = prompt_details.get("cached_tokens")
    written = prompt_details.get("cache_write_tokens")
    # LiteLLM adds Anthropic's cache fields to this dialect; where OpenAI's own are
    # missing, they are the only account of the cache (and writes cost more than input).
    if cached is None:
        cached = usage.get("cache_read_input_tokens")
    if written is None:
        written = usage.get("cache_creation_input_tokens")
    written_1h = _mapping(usage.get("cache_creation")).get("ephemeral_1h_input_tokens")
    return _buckets(
        prompt,
        completion,
        _count(cached),
        _count(written),
        reasoning,
        _count(written_1h),
        audio=_count(prompt_details.get("audio_tokens")),
        completion_audio=_count(completion_details.get("audio_tokens")),
    )


def _responses(usage: Mapping[str, Any]) -> Usage:
    return _buckets(
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
        _count(_mapping(usage.get("input_tokens_details")).get("cached_tokens")),
        0,
        _count(_mapping(usage.get("output_tokens_details")).get("reasoning_tokens")),
    )


def _anthropic(usage: Mapping[str, Any]) -> Usage:
    uncached = _count(usage.get("input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    split = _mapping(usage.get("cache_creation"))
    written_5m = _count(split.get("ephemeral_5m_input_tokens"))
    written_1h = _count(split.get("ephemeral_1h_input_tokens"))
    written = (
        _count(usage["cache_creation_input_tokens"])
        if "cache_creation_input_tokens" in usage
        else written_5m + written_1h
    )
    # input_tokens excludes reads and writes: adding them is the one correct total, and
    # the writes are counted once, as writes (not also as uncached input).
    return _buckets(
        uncached + read + written, _count(usage.get("output_tokens")), read, written, 0, written_1h
    )


def _deepseek(usage: Mapping[str, Any]) -> Usage:
    hit = _count(usage.get("prompt_cache_hit_tokens"))
    miss = _count(usage.get("prompt_cache_miss_tokens"))
    prompt = _count(usage["prompt_tokens"]) if "prompt_tokens" in usage else hit + miss
    reasoning = _count(_mapping(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    return _buckets(prompt, _count(usage.get("completion_tokens")), hit, 0, reasoning)


def _gemini(usage: Mapping[str, Any]) -> Usage:
    # promptTokenCount already includes cachedContentTokenCount: adding the two would
    # count every cache hit twice.
    prompt = _count(usage.get("promptTokenCount")) + _count(usage.get("toolUsePromptTokenCount"))
    thoughts = _count(usage.get("thoughtsTokenCount"))
    completion = _count(usage.get("candidatesTokenCount")) + thoughts
    return _buckets(
        prompt,
        completion,
        _count(usage.get("cachedContentTokenCount")),
        0,
        thoughts,
        audio=_modality_count(usage.get("promptTokensDetails"))
        + _modality_count(usage.get("toolUsePromptTokensDetails")),
        cached_audio=_modality_count(usage.get("cacheTokensDetails")),
        completion_audio=_modality_count(usage.get("candidatesTokensDetails")),
    )


def _modality_count(details: object, modality: str = "AUDIO") -> int:
    """The tokens of ``modality`` in a Gemini list of ``{"modality", "tokenCount"}``."""
    if type(details) is not list:
        return 0
    return sum(
        _count(part.get("tokenCount"))
        for part in details
        if isinstance(part, Mapping) and part.get("modality") == modality
    )


def _prompt_counted(key: str) -> Callable[[Mapping[str, Any]], bool]:
    def counted(usage: Mapping[str, Any]) -> bool:
        return _dollars(usage.get(key)) is not None

    return counted


def _deepseek_prompt_counted(usage: Mapping[str, Any]) -> bool:
    return _dollars(usage.get("prompt_tokens")) is not None or (
        _dollars(usage.get("prompt_cache_hit_tokens")) is not None
        and _dollars(usage.get("prompt_cache_miss_tokens")) is not None
    )


# Whether a usage object of each dialect has a usable prompt count: without one its
# cost is unknown (a total alone cannot be priced, input and output differ in price).
_PROMPT_COUNTED: dict[UsageDialect, Callable[[Mapping[str, Any]], bool]] = {
    UsageDialect.OPENAI: _prompt_counted("prompt_tokens"),
    UsageDialect.OPENAI_RESPONSES: _prompt_counted("input_tokens"),
    UsageDialect.ANTHROPIC: _prompt_counted("input_tokens"),
    UsageDialect.DEEPSEEK: _deepseek_prompt_counted,
    UsageDialect.GEMINI: _prompt_counted("promptTokenCount"),
}


def _reports(usage: Mapping[str, Any], dialect: UsageDialect) -> bool:
    """Whether ``usage``, read in ``dialect``, says what the call cost."""
    return _PROMPT_COUNTED[dialect](usage) or _dollars(usage.get("cost")) is not None


_READERS = {
    UsageDialect.OPENAI: _openai,
    UsageDialect.OPENAI_RESPONSES: _responses,
    UsageDialect.ANTHROPIC: _anthropic,
    UsageDialect.DEEPSEEK: _deepseek,
    UsageDialect.GEMINI: _gemini,
}


def _buckets(
    prompt: int,
    completion: int,
    cached: int,
    written: int,
    reasoning: int,
    written_1h: int = 0,
    *,
    audio: int = 0,
    cached_audio: int = 0,
    completion_audio: int = 0,
) -> Usage:
    """A ``Usage`` whose buckets add up, each clamped to what is left of the total; not
    ``reported`` when the prompt or the completion is no count a call could have (every
    other bucket is clamped to one of them). Audio is a share of its total, cached audio
    of both the cache reads and the audio."""
    if prompt > MAX_TOKENS or completion > MAX_TOKENS:
        return Usage(reported=False)
    cached = min(cached, prompt)
    written = min(written, prompt - cached)
    audio = min(audio, prompt)
    return Usage(
        prompt,
        completion,
        cached,
        written,
        min(reasoning, completion),
        min(written_1h, written),
        prompt_audio_tokens=audio,
        cached_audio_tokens=min(cached_audio, cached, audio),
        completion_audio_tokens=min(completion_audio, completion),
    )


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    for key, value in update.items():
        if value is None:
            continue
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            merged[key] = _merge(dict(old), value)
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def _count(value: object) -> int:
    if type(value) is int:  # the common case, first (bool is not int by type)
        return value if value > 0 else 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return max(int(value), 0)


def _dollars(value: object) -> float | None:
    if type(value) is int:  # the common case, first (bool is not int by type)
        # JSON's ints have no bound, floats do: a wider one (which orjson refuses and the
        # stdlib's parser reads) is no amount, rather than an OverflowError failing the
        # paid call being priced.
        return float(value) if 0 <= value <= _FLOAT_MAX else None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf:
        return float(value)
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case: no ABC check
        return value
    return value if isinstance(value, Mapping) else {}

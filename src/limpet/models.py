"""What a call returns: ``Completion`` with its ``Usage``, ``Cost`` and ``CacheStatus``.

These are plain slotted records, not frozen ones: every call builds fresh instances, so
nothing is shared between callers, and a frozen dataclass costs about three times as much
to build, which shows on the cache-hit path.

A ``Completion`` served from a cache entry, or shared by coalesced callers, reads its
answer through ``shared_completion``: the answer is decoded once, and each caller's
``raw`` and ``usage`` are its own copies, made when first touched, so no caller can change
what another reads, and a caller that never looks at them pays for no copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

__all__ = [
    "CacheStatus",
    "Completion",
    "Cost",
    "Embeddings",
    "SharedAnswer",
    "Usage",
    "json_copy",
    "shared_completion",
]


class CacheStatus(enum.StrEnum):
    """How a call was served.

    - ``hit``: a cache tier answered; nothing went upstream.
    - ``miss``: this caller's request went upstream (and was stored when cacheable); or
      the caller that started it left (cancelled, past its deadline, a stream closed)
      and this caller, the first still waiting, has its answer as its own: each upstream
      answer a caller gets is one caller's miss, with what it cost.
    - ``coalesced``: this caller shared another caller's upstream request.
    - ``bypass``: policy or the caller skipped the cache.
    """

    HIT = "hit"
    MISS = "miss"
    COALESCED = "coalesced"
    BYPASS = "bypass"


@dataclass(slots=True)
class Usage:
    """Token counts of one call, in buckets that add up, whatever the provider's dialect.

    ``prompt_tokens`` = ``uncached_tokens`` + ``cached_tokens`` + ``cache_write_tokens``,
    and ``cache_write_tokens`` = ``cache_write_5m_tokens`` + ``cache_write_1h_tokens``.
    A response without usage gives zeros with ``reported`` False: its counts, and so its
    cost, are unknown, not nothing. ``limpet.providers.usage`` builds one from every provider's
    dialect.

    Attributes:
        prompt_tokens: every input token, cached or not.
        completion_tokens: every output token, reasoning included.
        cached_tokens: input tokens read from the provider's prompt cache.
        cache_write_tokens: input tokens written to the provider's prompt cache, any TTL.
        reasoning_tokens: the part of ``completion_tokens`` spent reasoning.
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with a 1 h TTL
            (Anthropic's ``ttl: "1h"``), priced above the default 5 min writes.
        reported: False when the response carried no usage: the zeros stand for unknown
            counts, and ``Completion.cost`` is None.
        prompt_audio_tokens: the part of ``prompt_tokens`` that is audio, cached or not
            (priced at the model's audio input price where it has one).
        cached_audio_tokens: the part of ``cached_tokens`` that is audio, where the
            provider says (Gemini's ``cacheTokensDetails``); otherwise every cache read
            counts as text.
        completion_audio_tokens: the part of ``completion_tokens`` that is audio.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reported: bool = True
    prompt_audio_tokens: int = 0
    cached_audio_tokens: int = 0
    completion_audio_tokens: int = 0

    @property
    def uncached_tokens(self) -> int:
        """Input tokens billed at the full prompt price."""
        return self.prompt_tokens - self.cached_tokens - self.cache_write_tokens

    @property
    def cache_write_5m_tokens(self) -> int:
        """Cache writes with the default (5 min) TTL."""
        return self.cache_write_tokens - self.cache_write_1h_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        """The sum of two calls' usage; not ``reported`` when either was not (the sum
        is then a lower bound)."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.reported and other.reported,
            self.prompt_audio_tokens + other.prompt_audio_tokens,
            self.cached_audio_tokens + other.cached_audio_tokens,
            self.completion_audio_tokens + other.completion_audio_tokens,
        )


@dataclass(slots=True)
class Cost:
    """What a call cost and what limpet saved, in US dollars.

    On a miss, ``usd`` is the gateway's reported cost and ``saved_usd`` what provider
    prompt-cache reads saved. On a hit or a coalesced call, ``usd`` is 0 and
    ``saved_usd`` is the original call's cost. ``Completion.cost`` is None, never a
    ``Cost`` of zeros, when the cost is unknown.
    """

    usd: float
    saved_usd: float = 0.0


@dataclass(slots=True)
class Completion:
    """The result of ``Client.complete``.

    Attributes:
        raw: the upstream JSON body as received (on a hit: as it was received then).
        model: the model that answered.
        usage: token counts of the original upstream call.
        cost: dollars spent and saved, or None when unknown: the response reported no
            usage (``usage.reported`` is False), or no price was known for the model; on a
            hit or coalesced call, None when the original call's cost was unknown.
        cache: how this call was served.
        endpoint: name of the endpoint that served the upstream call.
        key: the cache key, or None when the request was not cacheable.
        tier: for a hit, the index of the cache tier that answered it (0: the fastest,
            ``TieredCache.tiers`` order); None for any other call.
    """

    raw: dict[str, Any]
    model: str
    usage: Usage
    cost: Cost | None
    cache: CacheStatus
    endpoint: str
    key: str | None
    tier: int | None = field(default=None, compare=False)

    @property
    def message(self) -> dict[str, Any]:
        """The first choice's message."""
        message: dict[str, Any] = self.raw["choices"][0]["message"]
        return message

    @property
    def content(self) -> str | None:
        """The first choice's message content."""
        content = self.message.get("content")
        return content if isinstance(content, str) else None

    @property
    def finish_reason(self) -> str | None:
        reason = self.raw["choices"][0].get("finish_reason")
        return reason if isinstance(reason, str) else None


class SharedAnswer(Protocol):
    """An upstream body several readers share (a cache entry); nobody mutates it."""

    @property
    def body(self) -> dict[str, Any]: ...


# The dataclass's own storage for ``raw`` and ``usage``.
_RAW_SLOT = Completion.__dict__["raw"]
_USAGE_SLOT = Completion.__dict__["usage"]


def _usage_copy(usage: Usage) -> Usage:
    return Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
        usage.reported,
        usage.prompt_audio_tokens,
        usage.cached_audio_tokens,
        usage.completion_audio_tokens,
    )


class _SharedCompletion(Completion):
    """A ``Completion`` whose ``raw`` and ``usage`` are copied from a shared answer when
    first touched.

    Everything else is a ``Completion``'s: the same fields, equality with any
    ``Completion`` of equal fields, ``dataclasses.replace`` (an equal ``Completion``), and
    ``copy``/``pickle`` (a plain ``Completion``). ``content`` and ``finish_reason`` read
    the shared answer without copying it (strings cannot be changed) until ``raw`` has
    been touched; from then on everything reads this caller's own copy, as on any
    ``Completion``.
    """

    __slots__ = ("_shared", "_shared_usage")

    _shared: SharedAnswer
    _shared_usage: Usage | None  # None once this caller has its own copy

    @property  # a field read through a property, as ``raw``
    def usage(self) -> Usage:
        shared = self._shared_usage
        if shared is not None:
            _USAGE_SLOT.__set__(self, _usage_copy(shared))
            self._shared_usage = None
        value: Usage = _USAGE_SLOT.__get__(self, Completion)
        return value

    @usage.setter
    def usage(self, value: Usage) -> None:
        _USAGE_SLOT.__set__(self, value)
        self._shared_usage = None

    @property
    def raw(self) -> dict[str, Any]:
        try:
            value: dict[str, Any] = _RAW_SLOT.__get__(self, Completion)
        except AttributeError:
            value = json_copy(self._shared.body)
            _RAW_SLOT.__set__(self, value)
        return value

    @raw.setter
    def raw(self, value: dict[str, Any]) -> None:
        _RAW_SLOT.__set__(self, value)

    @property
    def content(self) -> str | None:
        content = self._first_choice()["message"].get("content")
        return content if isinstance(content, str) else None

    @property
    def finish_reason(self) -> str | None:
        reason = self._first_choice().get("finish_reason")
        return reason if isinstance(reason, str) else None

    def _first_choice(self) -> dict[str, Any]:
        try:
            body: dict[str, Any] = _RAW_SLOT.__get__(self, Completion)
        except AttributeError:
            body = self._shared.body  # read only: nothing of it is handed out
        choice: dict[str, Any] = body["choices"][0]
        return choice

    def _fields(self) -> tuple[Any, ...]:
        return (self.raw, self.model, self.usage, self.cost, self.cache, self.endpoint, self.key)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Completion):
            return NotImplemented
        theirs = (other.raw, other.model, other.usage, other.cost, other.cache)
        return self._fields() == (*theirs, other.endpoint, other.key)

    __hash__ = None  # type: ignore[assignment]  # as a Completion's: mutable

    def __repr__(self) -> str:
        return Completion.__repr__(self).replace(type(self).__qualname__, "Completion", 1)

    def __reduce__(self) -> tuple[type[Completion], tuple[Any, ...]]:
        return Completion, (*self._fields(), self.tier)


def shared_completion(
    shared: SharedAnswer,
    model: str,
    usage: Usage,
    cost: Cost | None,
    cache: CacheStatus,
    endpoint: str,
    key: str | None,
    tier: int | None = None,
) -> Completion:
    """A ``Completion`` of ``shared``'s body, copied for this caller only when it touches
    ``raw`` (or ``message``); ``shared.body`` is read, never changed, and not read at all
    until then (a cache entry decodes it on first use). ``usage`` may be shared too: it is
    never changed, and copied for this caller when it first touches ``usage``."""
    completion = object.__new__(_SharedCompletion)
    completion._shared = shared
    completion._shared_usage = usage
    completion.model = model
    completion.cost = cost
    completion.cache = cache
    completion.endpoint = endpoint
    completion.key = key
    completion.tier = tier
    return completion


def json_copy(value: Any) -> Any:
    """A copy of a JSON value that shares no dict or list with it (strings, numbers and
    the like are immutable, so they are shared): O(containers), not O(bytes), so a
    4 MB answer copies in microseconds. Equal to ``orjson.loads(orjson.dumps(value))``
    for what orjson round-trips."""
    try:
        return _copied(value)
    except RecursionError:  # deeper than Python recurses: orjson's own limit decides
        return orjson.loads(orjson.dumps(value))


def _copied(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {k: _copied(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
    if kind is list:
        return [_copied(v) if type(v) in _CONTAINERS else v for v in value]
    return value


_CONTAINERS = frozenset({dict, list})


@dataclass(slots=True)
class Embeddings:
    """The result of ``Client.embed``: one vector per input, and how each was found.

    Attributes:
        vectors: one vector per input, in input order (float32 values, whether it came
            from upstream or from the cache, so a hit equals the miss that stored it).
        model: the model asked for (the one that answered, when a request went upstream).
        usage: tokens of what this call sent upstream (zeros when nothing was sent).
        cost: dollars this call spent upstream (``usd``) and saved (``saved_usd``: what
            the vectors of its hits and coalesced inputs cost when they were fetched, each
            its share of its request's cost), or None when either is unknown.
        hits: inputs a cache tier answered.
        misses: distinct inputs this call sent upstream.
        coalesced: inputs answered by another caller's upstream request (another call's,
            in this process or another) or by an identical input earlier in this batch.
        raw_responses: the upstream bodies this call received, as received.
    """

    vectors: list[list[float]]
    model: str
    usage: Usage
    cost: Cost | None
    hits: int
    misses: int
    coalesced: int
    raw_responses: list[dict[str, Any]]

    @property
    def cache(self) -> CacheStatus:
        """The call as a whole: ``miss`` when it sent any input upstream, else
        ``coalesced`` when another caller's request answered any, else ``hit``."""
        if self.misses:
            return CacheStatus.MISS
        return CacheStatus.COALESCED if self.coalesced else CacheStatus.HIT

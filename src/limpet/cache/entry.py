"""A stored completion: ``CacheEntry``, whose body every reader shares and nobody changes,
parsed from its JSON only when first read; and what makes a body fit to serve."""

from __future__ import annotations

from typing import Any

import orjson

from limpet.errors import CacheCorruptError
from limpet.models import Usage
from limpet.providers.usage import has_usage

__all__ = ["CacheEntry", "servable"]


class CacheEntry:
    """A stored completion.

    An entry is shared by every reader of it (coalesced callers, every hit on the same
    stored bytes), so nobody may change it, its body or its usage: a ``Completion`` copies
    them for its caller (``limpet.models.shared_completion``). A decoded entry keeps the
    body's JSON and parses it on first use of ``body``.

    Attributes:
        body: the upstream JSON body as received (read only).
        usage: its normalised usage (read only).
        cost_usd: what the original call cost, or None when unknown.
        endpoint: name of the endpoint that served it.
        created_at: wall-clock time of the upstream answer (unix seconds).
        expires_at: wall-clock time after which the entry is stale (unix seconds).
        stream: for an answer that was streamed, the JSON of how it was chunked (see
            ``limpet.http.chunks``), so a replay repeats the live stream's deltas; kept as
            bytes and parsed only when replayed, so a plain hit never pays for it.
        model: the body's ``model``, or "" when it has none.
        saved_usd: what the provider's prompt cache saved on the upstream call that made
            it, for the caller whose call it was (None: unknown, or read from a tier:
            it is not stored).
        partial: the answer lacks a choice asked for or one is unfinished (the upstream
            stage says so): served to its caller, never stored.
    """

    __slots__ = (
        "_body_usage",
        "_json",
        "_parsed",
        "_servable",
        "cost_usd",
        "created_at",
        "endpoint",
        "expires_at",
        "model",
        "partial",
        "saved_usd",
        "stream",
        "usage",
    )

    def __init__(
        self,
        body: dict[str, Any],
        usage: Usage,
        cost_usd: float | None,
        endpoint: str,
        created_at: float,
        expires_at: float,
        stream: bytes | None = None,
        *,
        body_usage: bool | None = None,
    ) -> None:
        self._parsed: dict[str, Any] | None = body
        self._json: bytes | memoryview | None = None
        # Whether the body's usage object reports anything, when its maker knows (the
        # upstream stage parsed it: ``usage.reported``); found from the body otherwise.
        self._body_usage = body_usage
        self._servable: bool | None = None
        self.usage = usage
        self.cost_usd = cost_usd
        self.endpoint = endpoint
        self.created_at = created_at
        self.expires_at = expires_at
        self.stream = stream
        model = body.get("model") if type(body) is dict else None
        self.model = model if type(model) is str else ""
        self.saved_usd: float | None = None
        self.partial = False

    @classmethod
    def of_json(
        cls,
        body: bytes | memoryview,
        model: str,
        body_usage: bool,
        usage: Usage,
        cost_usd: float | None,
        endpoint: str,
        created_at: float,
        expires_at: float,
        stream: bytes | None = None,
    ) -> CacheEntry:
        """An entry whose body is the JSON ``body``, parsed on first use of ``body``."""
        entry = cls.__new__(cls)
        entry._parsed, entry._json, entry._body_usage = None, body, body_usage
        entry._servable = None
        entry.usage, entry.cost_usd, entry.endpoint = usage, cost_usd, endpoint
        entry.created_at, entry.expires_at, entry.stream = created_at, expires_at, stream
        entry.model = model
        entry.saved_usd = None
        entry.partial = False
        return entry

    @property
    def body(self) -> dict[str, Any]:
        """The body, parsed once for every reader (read only).

        Raises:
            CacheCorruptError: the stored JSON does not parse to a servable body (only an
                entry forged with a valid signature could get this far: one decoded
                without a key was checked then).
        """
        body = self._parsed
        if body is None:
            body = self._parsed = _parsed_body(self._json or b"")
        return body

    @property
    def body_json(self) -> bytes:
        """The body's JSON, as stored (encoded once)."""
        if self._json is None:
            self._json = orjson.dumps(self._parsed)
        return bytes(self._json)

    def check(self) -> None:
        """Parse the body now, if it was not.

        Raises:
            CacheCorruptError: as ``body``.
        """
        _ = self.body

    @property
    def servable(self) -> bool:
        """Whether a hit could be served from the body (a decoded one was, when stored);
        checked once."""
        known = self._servable
        if known is None:
            parsed = self._parsed
            known = self._servable = parsed is None or servable(parsed)
        return known

    @property
    def body_has_usage(self) -> bool:
        """Whether the body carried a usage object that reports anything."""
        if self._body_usage is None:
            body = self.body
            self._body_usage = type(body) is dict and has_usage(body.get("usage"))
        return self._body_usage

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheEntry):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        parsed = self._parsed
        body = "<not parsed>" if parsed is None else repr(parsed)
        return (
            f"CacheEntry(body={body}, usage={self.usage!r}, cost_usd={self.cost_usd!r}, "
            f"endpoint={self.endpoint!r}, created_at={self.created_at!r}, "
            f"expires_at={self.expires_at!r}, stream={self.stream!r})"
        )

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.body,
            self.usage,
            self.cost_usd,
            self.endpoint,
            self.created_at,
            self.expires_at,
            self.stream,
        )


def _parsed_body(data: bytes | memoryview) -> dict[str, Any]:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CacheCorruptError(f"entry body is malformed: {exc}") from exc
    problem = _body_problem(body)
    if problem is not None:
        raise CacheCorruptError(problem)
    result: dict[str, Any] = body
    return result


def servable(body: object) -> bool:
    """Whether a hit could be served from ``body``: what decoding an entry checks, and
    what is worth storing."""
    return _body_problem(body) is None


def _body_problem(body: object) -> str | None:
    """What makes ``body`` unfit to serve from, or None: every choice must be an object
    with a ``message`` object, its tool calls a list of objects (a stream replays each
    choice's), the model a string. O(choices and their tool calls): a hit has one."""
    if type(body) is not dict:
        return "entry body is not an object"
    choices = body.get("choices")
    if type(choices) is not list or not choices:
        return "entry body has no choices"
    for choice in choices:
        if type(choice) is not dict or type(choice.get("message")) is not dict:
            return "entry body has a choice without a message object"
        calls = choice["message"].get("tool_calls")
        if calls is not None and (
            type(calls) is not list or any(type(c) is not dict for c in calls)
        ):
            return "entry body's tool calls are not a list of objects"
    model = body.get("model")
    if model is not None and type(model) is not str:
        return "entry body's model is not a string"
    return None

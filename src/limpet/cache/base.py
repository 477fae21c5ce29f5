"""The contract every cache backend keeps, and the entry codec they all share.

Backends store opaque bytes under a key with a TTL; they know nothing of completions.
A backend that cannot serve raises ``CacheUnavailableError`` and never anything else:
falling through to the next tier, or to upstream, is ``TieredCache``'s job alone.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Protocol, runtime_checkable

import orjson

from limpet.cache.sealing import Seal
from limpet.errors import CacheCorruptError
from limpet.models import Usage
from limpet.providers.usage import has_usage

__all__ = [
    "ENTRY_FORMAT",
    "CacheBackend",
    "CacheEntry",
    "EntryCodec",
    "servable",
    "stored_chunks",
]

#: The entry layout version; an entry of another version decodes as corrupt (a miss).
#: 2: usage gained ``cache_write_1h_tokens``.
#: 3: bound to its key (which it carries, under the MAC); the stream's length.
#: 4: a CRC-32 of the payload, the model and flags in the header: the body is decoded
#:    only when read.
ENTRY_FORMAT = 4

# CRC-32 of everything after it. Then prompt, completion, cached, cache-write, reasoning,
# 1 h cache-write tokens; cost (NaN: unknown); created_at, expires_at; key, endpoint name,
# body, stream (0: not streamed) and model lengths; flags. Then the key, the endpoint
# name, the model, the body's JSON and, for a streamed answer, its chunking's JSON.
_CRC = struct.Struct("<I")
_META = struct.Struct("<6Q3dIHIIHB")
# Flags: the usage counts were reported; the body carried a usage object; the body was
# servable when encoded (an entry that is not reads back as corrupt).
_REPORTED, _BODY_USAGE, _SERVABLE = 1, 2, 4


@runtime_checkable
class CacheBackend(Protocol):
    """Bytes under string keys, with a TTL. Every method may raise ``CacheUnavailableError``."""

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; absent is fine."""
        ...

    async def clear(self) -> None:
        """Remove every entry this backend holds."""
        ...

    async def aclose(self) -> None:
        """Finish pending work and release connections. Idempotent."""
        ...


class CacheEntry:
    """A stored completion.

    Its body is shared by every reader of the entry (coalesced callers, a hit's
    ``Completion``), so nobody may change it: a ``Completion`` copies it for its caller
    (``limpet.models.shared_completion``). A decoded entry keeps the body's JSON and
    parses it on first use of ``body``.

    Attributes:
        body: the upstream JSON body as received (read only).
        usage: its normalised usage.
        cost_usd: what the original call cost, or None when unknown.
        endpoint: name of the endpoint that served it.
        created_at: wall-clock time of the upstream answer (unix seconds).
        expires_at: wall-clock time after which the entry is stale (unix seconds).
        stream: for an answer that was streamed, the JSON of how it was chunked (see
            ``limpet.http.chunks``), so a replay repeats the live stream's deltas; kept as
            bytes and parsed only when replayed, so a plain hit never pays for it.
        model: the body's ``model``, or "" when it has none.
    """

    __slots__ = (
        "_body",
        "_body_usage",
        "_json",
        "cost_usd",
        "created_at",
        "endpoint",
        "expires_at",
        "model",
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
    ) -> None:
        self._body: dict[str, Any] | None = body
        self._json: bytes | memoryview | None = None
        self._body_usage: bool | None = None
        self.usage = usage
        self.cost_usd = cost_usd
        self.endpoint = endpoint
        self.created_at = created_at
        self.expires_at = expires_at
        self.stream = stream
        model = body.get("model") if type(body) is dict else None
        self.model = model if type(model) is str else ""

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
        entry._body, entry._json, entry._body_usage = None, body, body_usage
        entry.usage, entry.cost_usd, entry.endpoint = usage, cost_usd, endpoint
        entry.created_at, entry.expires_at, entry.stream = created_at, expires_at, stream
        entry.model = model
        return entry

    @property
    def body(self) -> dict[str, Any]:
        """The body, parsed once for every reader (read only).

        Raises:
            CacheCorruptError: the stored JSON does not parse to a servable body (only an
                entry forged with a valid checksum and no signature can get this far).
        """
        body = self._body
        if body is None:
            body = self._body = _parsed_body(self._json or b"")
        return body

    @property
    def body_json(self) -> bytes:
        """The body's JSON, as stored (encoded once)."""
        if self._json is None:
            self._json = orjson.dumps(self._body)
        return bytes(self._json)

    @property
    def servable(self) -> bool:
        """Whether a hit could be served from the body (a decoded one was, when stored)."""
        return self._body is None or servable(self._body)

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
        body = "<not parsed>" if self._body is None else repr(self._body)
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


class EntryCodec:
    """Encodes entries to bytes and back, bound to their key, optionally signed.

    Layout: ``b"LP"``, format byte, signed flag, [32-byte MAC], a CRC-32 of the rest, a
    fixed binary header (usage counts, cost, times, lengths, flags), the key the entry is
    stored under, the endpoint name, the model, the body's JSON, then the stream's
    chunking when there is one. The metadata is binary and the body is parsed only when
    something reads it, so a hit parses no JSON at all until its ``raw`` is touched; the
    checksum stands in for the parse as the check that the bytes are whole.

    An entry is bound to its key: it carries the key (a cache key is itself a SHA-256
    digest of the request; comparing it is cheaper than hashing it again, and exact), so
    one read under another key (copied or misplaced) is corrupt. With ``hmac_key`` the MAC
    (HMAC-SHA256) covers every byte after it, the key included, so a signed entry can be
    neither moved nor altered; an unsigned entry or a bad MAC is corrupt. Without
    ``hmac_key``, a signed entry is still read (its MAC is not checked, its key is). The
    key is the logical cache key (``TieredCache``'s), never a backend's storage key, so
    the same bytes are valid in every tier. Its length, and every other section's, is in
    the header: a truncated or padded entry is corrupt.

    A decoded entry is well-shaped: its body is an object with a non-empty ``choices``
    list of objects, each with a ``message`` object; anything else is corrupt (the encoder
    records the check in the header; the body is checked again when parsed).
    """

    __slots__ = ("_seal",)

    def __init__(self, hmac_key: bytes | None = None) -> None:
        self._seal = Seal(b"LP", ENTRY_FORMAT, hmac_key, "entry")

    def encode(self, key: str, entry: CacheEntry) -> bytes:
        """The bytes of ``entry``, to be stored under ``key`` (and only there)."""
        u = entry.usage
        bound = key.encode()
        name = entry.endpoint.encode()
        model = entry.model.encode()
        body = entry.body_json
        stream = entry.stream or b""
        flags = (
            (_REPORTED if u.reported else 0)
            | (_BODY_USAGE if entry.body_has_usage else 0)
            | (_SERVABLE if entry.servable else 0)
        )
        meta = _META.pack(
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
            u.cache_write_1h_tokens,
            math.nan if entry.cost_usd is None else entry.cost_usd,
            entry.created_at,
            entry.expires_at,
            len(bound),
            len(name),
            len(body),
            len(stream),
            len(model),
            flags,
        )
        payload = b"".join((meta, bound, name, model, body, stream))
        return self._seal.wrap(_CRC.pack(zlib.crc32(payload)) + payload)

    def decode(self, key: str, data: bytes) -> CacheEntry:
        """The entry in ``data``, read under ``key``. Its body is parsed on first use:
        the checksum (and, with ``hmac_key``, the MAC) vouch for the bytes, and the
        encoder recorded whether the body was servable.

        Raises:
            CacheCorruptError: wrong magic or format, a bad checksum or signature, stored
                under another key, a truncated or malformed payload, or an ill-shaped body.
        """
        start = self._seal.open(data)
        try:
            (crc,) = _CRC.unpack_from(data, start)
            start += _CRC.size
            if zlib.crc32(memoryview(data)[start:]) != crc:
                raise CacheCorruptError("entry checksum does not match")
            meta = _META.unpack_from(data, start)
            (prompt, completion, cached, written, reasoning, written_1h) = meta[:6]
            cost, created, expires, bound, size, length, streamed, named, flags = meta[6:]
            key_at = start + _META.size
            model_at = key_at + bound + size
            body_at = model_at + named
            stream_at = body_at + length
            if len(data) != stream_at + streamed:
                raise CacheCorruptError(
                    f"entry is {len(data)} bytes, its header says {stream_at + streamed}"
                )
            if data[key_at : key_at + bound] != key.encode():
                raise CacheCorruptError("entry was stored under another key")
            endpoint = data[key_at + bound : model_at].decode()
            model = data[model_at:body_at].decode()
        except (struct.error, UnicodeDecodeError) as exc:
            raise CacheCorruptError(f"entry payload is malformed: {exc}") from exc
        if not flags & _SERVABLE:
            raise CacheCorruptError("entry body is not servable")
        if not (math.isfinite(created) and math.isfinite(expires)):
            raise CacheCorruptError("entry times are not finite")
        return CacheEntry.of_json(
            memoryview(data)[body_at:stream_at],
            model,
            bool(flags & _BODY_USAGE),
            Usage(
                prompt,
                completion,
                cached,
                written,
                reasoning,
                written_1h,
                bool(flags & _REPORTED),
            ),
            None if cost != cost else cost,
            endpoint,
            created,
            expires,
            data[stream_at:] if streamed else None,
        )


def stored_chunks(chunking: bytes) -> list[dict[str, Any]]:
    """The chunks of a stored stream (``CacheEntry.stream``), each with its envelope.

    Parsed only to replay it, so a plain hit never pays for it; hence checked here rather
    than by ``EntryCodec.decode``.

    Raises:
        CacheCorruptError: the chunking is not JSON, or not ``{"envelope": {...},
            "chunks": [{...}, ...]}``.
    """
    try:
        stored = orjson.loads(chunking)
    except orjson.JSONDecodeError as exc:
        raise CacheCorruptError(f"stored stream is malformed: {exc}") from exc
    envelope = stored.get("envelope") if type(stored) is dict else None
    chunks = stored.get("chunks") if type(stored) is dict else None
    if type(envelope) is not dict or type(chunks) is not list:
        raise CacheCorruptError("stored stream is not an envelope and a list of chunks")
    if not all(type(chunk) is dict and _chunk_shaped(chunk) for chunk in chunks):
        raise CacheCorruptError("stored stream has a chunk that is not a chunk object")
    return [{**envelope, **chunk} for chunk in chunks]


def _chunk_shaped(chunk: dict[str, Any]) -> bool:
    """A chunk's choices, when it has any, are a list of objects (as every live one's)."""
    choices = chunk.get("choices")
    return choices is None or (
        type(choices) is list and all(type(choice) is dict for choice in choices)
    )


def servable(body: object) -> bool:
    """Whether a hit could be served from ``body``: what decoding an entry checks, and
    what is worth storing."""
    return _body_problem(body) is None


def _body_problem(body: object) -> str | None:
    """What makes ``body`` unfit to serve from, or None: every choice must be an object
    with a ``message`` object, the first one's tool calls a list of objects, the model a
    string. O(choices): a hit has one."""
    if type(body) is not dict:
        return "entry body is not an object"
    choices = body.get("choices")
    if type(choices) is not list or not choices:
        return "entry body has no choices"
    for choice in choices:
        if type(choice) is not dict or type(choice.get("message")) is not dict:
            return "entry body has a choice without a message object"
    calls = choices[0]["message"].get("tool_calls")
    if calls is not None and (type(calls) is not list or any(type(c) is not dict for c in calls)):
        return "entry body's tool calls are not a list of objects"
    model = body.get("model")
    if model is not None and type(model) is not str:
        return "entry body's model is not a string"
    return None

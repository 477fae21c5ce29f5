"""The contract every cache backend keeps, and the entry codec they all share.

Backends store opaque bytes under a key with a TTL; they know nothing of completions.
A backend that cannot serve raises ``CacheUnavailableError`` and never anything else:
falling through to the next tier, or to upstream, is ``TieredCache``'s job alone.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from limpet.cache.sealing import Seal
from limpet.errors import CacheCorruptError
from limpet.models import Usage

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
ENTRY_FORMAT = 3

# prompt, completion, cached, cache-write, reasoning, 1 h cache-write tokens; cost (NaN: unknown);
# created_at, expires_at; key, endpoint name, body and stream lengths (stream 0: not
# streamed). Then the key, the endpoint name, the body's JSON and, for a streamed answer,
# its chunking's JSON.
_META = struct.Struct("<6Q3dIHII")


@runtime_checkable
class CacheBackend(Protocol):
    """Bytes under string keys, with a TTL. Every method may raise ``CacheUnavailableError``.

    A backend may also say what else it can do with a ``capabilities`` class attribute, a
    ``limpet.cache.capabilities.TierCapabilities`` (local? shared? generations? leases?
    ...); one that says nothing is a plain tier (``capabilities.UNDECLARED``). It is not
    a member of this protocol, so that a backend written before it still is one; read it
    with ``capabilities_of()``, or ask ``TieredCache``.
    """

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


@dataclass(slots=True)
class CacheEntry:
    """A stored completion.

    Attributes:
        body: the upstream JSON body as received.
        usage: its normalised usage.
        cost_usd: what the original call cost, or None when unknown.
        endpoint: name of the endpoint that served it.
        created_at: wall-clock time of the upstream answer (unix seconds).
        expires_at: wall-clock time after which the entry is stale (unix seconds).
        stream: for an answer that was streamed, the JSON of how it was chunked (see
            ``limpet.http.chunks``), so a replay repeats the live stream's deltas; kept as
            bytes and parsed only when replayed, so a plain hit never pays for it.
    """

    body: dict[str, Any]
    usage: Usage
    cost_usd: float | None
    endpoint: str
    created_at: float
    expires_at: float
    stream: bytes | None = None


class EntryCodec:
    """Encodes entries to bytes and back, bound to their key, optionally signed.

    Layout: ``b"LP"``, format byte, signed flag, [32-byte MAC], a fixed binary header
    (usage counts, cost, times, lengths), the key the entry is stored under, the endpoint
    name, the body's JSON, then the stream's chunking when there is one. The metadata is
    binary so that a hit parses JSON only once, for the body it must return anyway.

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
    list of objects, each with a ``message`` object; anything else is corrupt.
    """

    __slots__ = ("_seal",)

    def __init__(self, hmac_key: bytes | None = None) -> None:
        self._seal = Seal(b"LP", ENTRY_FORMAT, hmac_key, "entry")

    def encode(self, key: str, entry: CacheEntry) -> bytes:
        """The bytes of ``entry``, to be stored under ``key`` (and only there)."""
        u = entry.usage
        bound = key.encode()
        name = entry.endpoint.encode()
        body = orjson.dumps(entry.body)
        stream = entry.stream or b""
        payload = (
            _META.pack(
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
            )
            + bound
            + name
            + body
            + stream
        )
        return self._seal.wrap(payload)

    def decode(self, key: str, data: bytes) -> CacheEntry:
        """The entry in ``data``, read under ``key``.

        Raises:
            CacheCorruptError: wrong magic or format, stored under another key, a bad
                signature, a truncated or malformed payload, or an ill-shaped body.
        """
        start = self._seal.open(data)
        try:
            (
                prompt,
                completion,
                cached,
                written,
                reasoning,
                written_1h,
                cost,
                created,
                expires,
                bound,
                size,
                length,
                streamed,
            ) = _META.unpack_from(data, start)
            key_at = start + _META.size
            body_at = key_at + bound + size
            stream_at = body_at + length
            if len(data) != stream_at + streamed:
                raise CacheCorruptError(
                    f"entry is {len(data)} bytes, its header says {stream_at + streamed}"
                )
            if data[key_at : key_at + bound] != key.encode():
                raise CacheCorruptError("entry was stored under another key")
            endpoint = data[body_at - size : body_at].decode()
            body = orjson.loads(data[body_at:stream_at])
        except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise CacheCorruptError(f"entry payload is malformed: {exc}") from exc
        problem = _body_problem(body)
        if problem is not None:
            raise CacheCorruptError(problem)
        if not (math.isfinite(created) and math.isfinite(expires)):
            raise CacheCorruptError("entry times are not finite")
        return CacheEntry(
            body,
            Usage(prompt, completion, cached, written, reasoning, written_1h),
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

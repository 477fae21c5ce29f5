"""The contract every cache backend keeps, and the entry codec they all share.

Backends store opaque bytes under a key with a TTL; they know nothing of completions.
A backend that cannot serve raises ``CacheUnavailableError`` and never anything else:
falling through to the next tier, or to upstream, is ``TieredCache``'s job alone.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from limpet.errors import CacheCorruptError
from limpet.models import Usage

__all__ = ["ENTRY_FORMAT", "CacheBackend", "CacheEntry", "EntryCodec"]

#: The entry layout version; an entry of another version decodes as corrupt (a miss).
#: 2: usage gained ``cache_write_1h_tokens``.
ENTRY_FORMAT = 2

_UNSIGNED_HEADER = b"LP" + bytes((ENTRY_FORMAT, 0))
_SIGNED_HEADER = b"LP" + bytes((ENTRY_FORMAT, 1))
_HEADER_SIZE = len(_UNSIGNED_HEADER)
_MAC_SIZE = 32
# prompt, completion, cached, cache-write, reasoning, 1 h cache-write tokens; cost (NaN: unknown);
# created_at, expires_at; endpoint name length; body length. Then the endpoint name, the
# body's JSON and, for a streamed answer, its chunking's JSON.
_META = struct.Struct("<6Q3dHI")


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
            ``limpet.streaming``), so a replay repeats the live stream's deltas; kept as
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
    """Encodes entries to bytes and back, optionally signed with HMAC-SHA256.

    Layout: ``b"LP"``, format byte, signed flag, [32-byte MAC over the rest], a fixed
    binary header (usage counts, cost, times, lengths), the endpoint name, the body's
    JSON, then the stream's chunking when there is one. The metadata is binary so that a
    hit parses JSON only once, for the body it must return anyway. With a key, an unsigned
    entry or a bad MAC is corrupt; without one, a signed entry is still read (its MAC is
    not checked).
    """

    __slots__ = ("_hmac_key",)

    def __init__(self, hmac_key: bytes | None = None) -> None:
        self._hmac_key = hmac_key

    def encode(self, entry: CacheEntry) -> bytes:
        u = entry.usage
        name = entry.endpoint.encode()
        body = orjson.dumps(entry.body)
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
                len(name),
                len(body),
            )
            + name
            + body
            + (entry.stream or b"")
        )
        if self._hmac_key is None:
            return _UNSIGNED_HEADER + payload
        mac = hmac.new(self._hmac_key, payload, hashlib.sha256).digest()
        return _SIGNED_HEADER + mac + payload

    def decode(self, data: bytes) -> CacheEntry:
        """Raises:
        CacheCorruptError: wrong magic or format, a bad signature, or a malformed payload.
        """
        if data.startswith(_UNSIGNED_HEADER):
            if self._hmac_key is not None:
                raise CacheCorruptError("entry is not signed")
            start = _HEADER_SIZE
        elif data.startswith(_SIGNED_HEADER):
            start = _HEADER_SIZE + _MAC_SIZE
            if self._hmac_key is not None:
                mac = hmac.new(self._hmac_key, data[start:], hashlib.sha256).digest()
                if not hmac.compare_digest(mac, data[_HEADER_SIZE:start]):
                    raise CacheCorruptError("entry signature does not match")
        else:
            raise CacheCorruptError("not a limpet entry of this format")
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
                size,
                length,
            ) = _META.unpack_from(data, start)
            body_at = start + _META.size + size
            stream_at = body_at + length
            endpoint = data[body_at - size : body_at].decode()
            body = orjson.loads(data[body_at:stream_at])
        except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise CacheCorruptError(f"entry payload is malformed: {exc}") from exc
        if type(body) is not dict:
            raise CacheCorruptError("entry body is not an object")
        return CacheEntry(
            body,
            Usage(prompt, completion, cached, written, reasoning, written_1h),
            None if cost != cost else cost,
            endpoint,
            created,
            expires,
            data[stream_at:] if len(data) > stream_at else None,
        )

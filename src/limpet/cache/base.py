"""The contract every cache backend keeps, and the entry codec they all share.

Backends store opaque bytes under a key with a TTL; they know nothing of completions.
A backend that cannot serve raises ``CacheUnavailableError`` and never anything else:
falling through to the next tier, or to upstream, is ``TieredCache``'s job alone.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Protocol, runtime_checkable

import orjson

from limpet.cache.entry import CacheEntry, servable
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
#: 4: a CRC-32 of the payload, the model and flags in the header: the body is decoded
#:    only when read.
#: 5: usage gained its audio counts (prompt, cached and completion audio tokens).
ENTRY_FORMAT = 5

# (After the envelope's checksum, ``limpet.cache.sealing``:) prompt, completion, cached,
# cache-write, reasoning, 1 h cache-write, audio prompt, cached audio and audio completion
# tokens; cost (NaN: unknown); created_at, expires_at; key, endpoint name, body, stream
# (0: not streamed) and model lengths; flags. Then the key, the endpoint name, the model,
# the body's JSON and, for a streamed answer, its chunking's JSON.
_META = struct.Struct("<9Q3dIHIIHB")
# Bounds of a codec's memo of its last reads: entries, and bytes it keeps alive.
_MEMO_MAX_ENTRIES = 1024
_MEMO_MAX_BYTES = 32 * 1024 * 1024
# Flags: the usage counts were reported; the body carried a usage object; the body was
# servable when encoded (an entry that is not reads back as corrupt).
_REPORTED, _BODY_USAGE, _SERVABLE = 1, 2, 4


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

    __slots__ = ("_memo", "_memo_bytes", "_seal", "_signed")

    def __init__(self, hmac_key: bytes | None = None) -> None:
        self._seal = Seal(b"LP", ENTRY_FORMAT, hmac_key, "entry")
        self._signed = hmac_key is not None
        # The last reads, by key: the very bytes object read and what it decoded to. An
        # in-process tier hands back the same object on every hit, so a hot entry is
        # checked and decoded once, and its body parsed at most once for every hit.
        self._memo: dict[str, tuple[bytes, CacheEntry]] = {}
        self._memo_bytes = 0

    def encode(self, key: str, entry: CacheEntry, *, chunking: bool = True) -> bytes:
        """The bytes of ``entry``, to be stored under ``key`` (and only there); without
        how its stream was chunked when not ``chunking`` (a replay then makes chunks of
        its body)."""
        u = entry.usage
        bound = key.encode()
        name = entry.endpoint.encode()
        model = entry.model.encode()
        body = entry.body_json
        stream = (entry.stream or b"") if chunking else b""
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
            u.prompt_audio_tokens,
            u.cached_audio_tokens,
            u.completion_audio_tokens,
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
        return self._seal.wrap(payload)

    def decode(self, key: str, data: bytes) -> CacheEntry:
        """The entry in ``data``, read under ``key``: the very entry of an earlier read of
        the same bytes object, when there was one. Entries are read only (a
        ``Completion`` copies what its caller may change: ``raw``, ``usage``), so every
        reader may share one.

        Raises:
            CacheCorruptError: as ``decode_new``.
        """
        memo = self._memo.get(key)
        if memo is not None and memo[0] is data:
            return memo[1]
        entry = self.decode_new(key, data)
        self._remember(key, data, entry)
        return entry

    def _remember(self, key: str, data: bytes, entry: CacheEntry) -> None:
        memo = self._memo
        old = memo.pop(key, None)
        if old is not None:
            self._memo_bytes -= len(old[0])
        if len(data) > _MEMO_MAX_BYTES // 4:
            return
        memo[key] = (data, entry)
        self._memo_bytes += len(data)
        while len(memo) > _MEMO_MAX_ENTRIES or self._memo_bytes > _MEMO_MAX_BYTES:
            self._memo_bytes -= len(memo.pop(next(iter(memo)))[0])

    def decode_new(self, key: str, data: bytes) -> CacheEntry:
        """The entry in ``data``, read under ``key``, decoded afresh. With ``hmac_key``, its
        body is parsed on first use: the MAC vouches for the bytes, and the encoder
        recorded whether the body was servable; without, it is parsed and checked now.

        Raises:
            CacheCorruptError: wrong magic or format, a bad checksum or signature, stored
                under another key, a truncated or malformed payload, or an ill-shaped body.
        """
        start = self._seal.open(data)
        view = memoryview(data)
        try:
            (*counts, cost, created, expires, bound, size, length, streamed, named, flags) = (
                _META.unpack_from(data, start)
            )
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
            model = data[model_at:body_at].decode() if named else ""
        except (struct.error, UnicodeDecodeError) as exc:
            raise CacheCorruptError(f"entry payload is malformed: {exc}") from exc
        if not flags & _SERVABLE:
            raise CacheCorruptError("entry body is not servable")
        if not (math.isfinite(created) and math.isfinite(expires)):
            raise CacheCorruptError("entry times are not finite")
        (
            prompt,
            completion,
            cached,
            written,
            reasoning,
            written_1h,
            audio,
            cached_audio,
            completion_audio,
        ) = counts
        entry = CacheEntry.of_json(
            view[body_at:stream_at],
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
                audio,
                cached_audio,
                completion_audio,
            ),
            None if cost != cost else cost,
            endpoint,
            created,
            expires,
            data[stream_at:] if streamed else None,
        )
        if not self._signed:
            # Unsigned, the checksum vouches for nothing a writer could not forge: the
            # body is checked now, so that a malformed one is a corrupt entry (a miss),
            # never a hit whose first use raises. Signed, it is what limpet stored.
            entry.check()
        return entry


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
    if not all(type(chunk) is dict and chunk_shaped(chunk) for chunk in chunks):
        raise CacheCorruptError("stored stream has a chunk that is not a chunk object")
    return [{**envelope, **chunk} for chunk in chunks]


def chunk_shaped(chunk: dict[str, Any]) -> bool:
    """A chunk's choices, when it has any, are a list of objects, each ``index`` an
    int: what a live chunk must be to be taken (``limpet.http.responses.stream_chunk``),
    so a stored stream that is not so was not stored by limpet."""
    choices = chunk.get("choices")
    return choices is None or (
        type(choices) is list
        and all(type(choice) is dict and type(choice.get("index", 0)) is int for choice in choices)
    )

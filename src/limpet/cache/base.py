"""The contract every cache backend keeps, and the entry codec they all share.

Backends store opaque bytes under a key with a TTL; they know nothing of completions.
A backend that cannot serve raises ``CacheUnavailableError`` and never anything else:
falling through to the next tier, or to upstream, is ``TieredCache``'s job alone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from limpet.errors import CacheCorruptError
from limpet.models import Usage

__all__ = ["ENTRY_FORMAT", "CacheBackend", "CacheEntry", "EntryCodec"]

#: The entry layout version; an entry of another version decodes as corrupt (a miss).
ENTRY_FORMAT = 1

_MAGIC = b"LP"
_UNSIGNED = 0
_SIGNED = 1
_MAC_SIZE = 32
_HEADER_SIZE = len(_MAGIC) + 2


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


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A stored completion.

    Attributes:
        body: the upstream JSON body as received.
        usage: its normalised usage.
        cost_usd: what the original call cost, or None when unknown.
        endpoint: name of the endpoint that served it.
        created_at: wall-clock time of the upstream answer (unix seconds).
        expires_at: wall-clock time after which the entry is stale (unix seconds).
    """

    body: dict[str, Any]
    usage: Usage
    cost_usd: float | None
    endpoint: str
    created_at: float
    expires_at: float


class EntryCodec:
    """Encodes entries to bytes and back, optionally signed with HMAC-SHA256.

    Layout: ``b"LP"``, format byte, signed flag, [32-byte MAC], JSON payload. With a key,
    an unsigned entry or a bad MAC is corrupt; without one, a signed entry is still read
    (its MAC is not checked).
    """

    __slots__ = ("_hmac_key",)

    def __init__(self, hmac_key: bytes | None = None) -> None:
        self._hmac_key = hmac_key

    def encode(self, entry: CacheEntry) -> bytes:
        u = entry.usage
        payload = orjson.dumps(
            {
                "b": entry.body,
                "u": [
                    u.prompt_tokens,
                    u.completion_tokens,
                    u.cached_tokens,
                    u.cache_write_tokens,
                    u.reasoning_tokens,
                ],
                "c": entry.cost_usd,
                "e": entry.endpoint,
                "t": entry.created_at,
                "x": entry.expires_at,
            }
        )
        if self._hmac_key is None:
            return _MAGIC + bytes((ENTRY_FORMAT, _UNSIGNED)) + payload
        mac = hmac.new(self._hmac_key, payload, hashlib.sha256).digest()
        return _MAGIC + bytes((ENTRY_FORMAT, _SIGNED)) + mac + payload

    def decode(self, data: bytes) -> CacheEntry:
        """Raises:
        CacheCorruptError: wrong magic or format, a bad signature, or a malformed payload.
        """
        if len(data) < _HEADER_SIZE or data[:2] != _MAGIC or data[2] != ENTRY_FORMAT:
            raise CacheCorruptError("not a limpet entry of this format")
        signed = data[3] == _SIGNED
        payload = data[_HEADER_SIZE + _MAC_SIZE :] if signed else data[_HEADER_SIZE:]
        if self._hmac_key is not None:
            if not signed:
                raise CacheCorruptError("entry is not signed")
            mac = hmac.new(self._hmac_key, payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, data[_HEADER_SIZE : _HEADER_SIZE + _MAC_SIZE]):
                raise CacheCorruptError("entry signature does not match")
        try:
            fields = orjson.loads(payload)
            prompt, completion, cached, written, reasoning = fields["u"]
            cost = fields["c"]
            entry = CacheEntry(
                body=fields["b"],
                usage=Usage(
                    prompt_tokens=int(prompt),
                    completion_tokens=int(completion),
                    cached_tokens=int(cached),
                    cache_write_tokens=int(written),
                    reasoning_tokens=int(reasoning),
                ),
                cost_usd=None if cost is None else float(cost),
                endpoint=str(fields["e"]),
                created_at=float(fields["t"]),
                expires_at=float(fields["x"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CacheCorruptError(f"entry payload is malformed: {exc}") from exc
        if not isinstance(entry.body, dict):
            raise CacheCorruptError("entry body is not an object")
        return entry

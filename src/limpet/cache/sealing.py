"""The envelope every stored value shares: magic, format, a signed flag and, with an
``hmac_key``, an HMAC-SHA256 over the rest (which carries the key it is bound to).

``EntryCodec`` (completions) and ``VectorCodec`` (embeddings) differ in their magic and
payload only; how a value is signed and checked has this one home.
"""

from __future__ import annotations

import hashlib
import hmac

from limpet.errors import CacheCorruptError

__all__ = ["Seal"]

_MAC_SIZE = 32


class Seal:
    """Wraps a payload in its envelope and checks one read back.

    Args:
        magic: two bytes that say what kind of value this is (``b"LP"``, ``b"LV"``).
        version: the payload's layout version; another version is corrupt.
        hmac_key: sign on write and require a good signature on read; None: unsigned on
            write, and a signed value is read without checking its MAC.
        kind: the value's name in error messages ("entry", "vector").
    """

    __slots__ = ("_hmac_key", "_kind", "_signed", "_unsigned")

    def __init__(self, magic: bytes, version: int, hmac_key: bytes | None, kind: str) -> None:
        self._unsigned = magic + bytes((version, 0))
        self._signed = magic + bytes((version, 1))
        self._hmac_key = hmac_key
        self._kind = kind

    def wrap(self, payload: bytes) -> bytes:
        """``payload`` in its envelope, signed when there is a key."""
        if self._hmac_key is None:
            return self._unsigned + payload
        mac = hmac.new(self._hmac_key, payload, hashlib.sha256).digest()
        return self._signed + mac + payload

    def open(self, data: bytes) -> int:
        """Where the payload of ``data`` starts, once its envelope checks out.

        Raises:
            CacheCorruptError: another magic or version; unsigned when a key is set; a
                signature that does not match.
        """
        header = len(self._unsigned)
        if data.startswith(self._unsigned):
            if self._hmac_key is not None:
                raise CacheCorruptError(f"{self._kind} is not signed")
            return header
        if not data.startswith(self._signed):
            raise CacheCorruptError(f"not a limpet {self._kind} of this format")
        start = header + _MAC_SIZE
        if self._hmac_key is not None:
            mac = hmac.new(self._hmac_key, memoryview(data)[start:], hashlib.sha256)
            if not hmac.compare_digest(mac.digest(), data[header:start]):
                raise CacheCorruptError(f"{self._kind} signature does not match")
        return start

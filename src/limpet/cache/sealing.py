"""The envelope every stored value shares: magic, format, a signed flag, with an
``hmac_key`` an HMAC-SHA256 over the rest, and a CRC-32 of the payload (which carries the
key it is bound to).

``EntryCodec`` (completions) and ``VectorCodec`` (embeddings) differ in their magic and
payload only; how a value is signed and checked has this one home. Unsigned, the
checksum is what tells a flipped bit, or another value's bytes written over part of this
one, from a value: without it such bytes could decode as another answer or vector.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

from limpet.errors import CacheCorruptError

__all__ = ["Seal"]

_MAC_SIZE = 32
# A CRC-32 of the payload, right before it.
_CRC = struct.Struct("<I")


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
        """``payload`` in its envelope, with its checksum, signed when there is a key."""
        checked = _CRC.pack(zlib.crc32(payload)) + payload
        if self._hmac_key is None:
            return self._unsigned + checked
        mac = hmac.new(self._hmac_key, checked, hashlib.sha256).digest()
        return self._signed + mac + checked

    def open(self, data: bytes) -> int:
        """Where the payload of ``data`` starts, once its envelope checks out.

        Raises:
            CacheCorruptError: another magic or version; unsigned when a key is set; a
                signature or a checksum that does not match.
        """
        header = len(self._unsigned)
        if data.startswith(self._unsigned):
            if self._hmac_key is not None:
                raise CacheCorruptError(f"{self._kind} is not signed")
            start = header
        elif not data.startswith(self._signed):
            raise CacheCorruptError(f"not a limpet {self._kind} of this format")
        else:
            start = header + _MAC_SIZE
            if self._hmac_key is not None:
                mac = hmac.new(self._hmac_key, memoryview(data)[start:], hashlib.sha256)
                if not hmac.compare_digest(mac.digest(), data[header:start]):
                    raise CacheCorruptError(f"{self._kind} signature does not match")
        payload = start + _CRC.size
        if len(data) < payload:
            raise CacheCorruptError(f"{self._kind} is truncated")
        (crc,) = _CRC.unpack_from(data, start)
        if zlib.crc32(memoryview(data)[payload:]) != crc:
            raise CacheCorruptError(f"{self._kind} checksum does not match")
        return payload

"""The key stage's memo: the keys of recently keyed requests, by the exact bytes hashed.

A hit keys the same request again and again, and SHA-256 over its canonical bytes is most
of what keying costs (about two thirds of a 2 KB request's hit path floor here). Looking
the bytes up in a dict costs a SipHash over them and one comparison instead, about a third
of the SHA-256. The memo maps the very bytes ``request_key`` hashes (the key header, then
the canonical request) to their digest, so it can only ever give the key SHA-256 would:
a dict compares the bytes themselves, and never their hash alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

__all__ = ["KEY_MEMO_BYTES", "KEY_MEMO_ENTRIES", "KeyMemo"]

#: Most keys a memo holds.
KEY_MEMO_ENTRIES = 1024
#: Most bytes of hashed input a memo holds; an input over a sixteenth of it is not kept.
KEY_MEMO_BYTES = 4 * 1024 * 1024


class KeyMemo:
    """SHA-256 hex digests of recent inputs, the oldest forgotten first.

    Example:
        >>> memo = KeyMemo()
        >>> key = memo.get(b"x") or memo.add(b"x")
        >>> key == hashlib.sha256(b"x").hexdigest() == memo.get(b"x")
        True
    """

    __slots__ = ("_bytes", "_keys", "get", "max_bytes", "max_entries")

    get: Callable[[bytes], str | None]

    def __init__(self, max_entries: int = KEY_MEMO_ENTRIES, max_bytes: int = KEY_MEMO_BYTES):
        self._keys: dict[bytes, str] = {}
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # The digest of ``data`` when it is held, else None: the dict's own ``get``, so
        # the hit path pays for no Python call.
        self.get = self._keys.get

    def __len__(self) -> int:
        """Inputs held."""
        return len(self._keys)

    def add(self, data: bytes) -> str:
        """The SHA-256 hex digest of ``data``, computed and held (unless ``data`` is
        large), the oldest inputs forgotten to make room."""
        key = hashlib.sha256(data).hexdigest()
        size = len(data)
        if size > self.max_bytes // 16 or data in self._keys:
            return key
        keys = self._keys
        keys[data] = key
        self._bytes += size
        while len(keys) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(keys))
            del keys[oldest]
            self._bytes -= len(oldest)
        return key

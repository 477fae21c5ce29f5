"""The entry codec every backend shares: round trip, versioning, signatures."""

from __future__ import annotations

import pytest

from limpet.cache.base import CacheEntry, EntryCodec
from limpet.errors import CacheCorruptError
from limpet.models import Usage

ENTRY = CacheEntry(
    body={"id": "gen-1", "choices": [{"message": {"role": "assistant", "content": "hé ✓"}}]},
    usage=Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4, cache_write_tokens=2),
    cost_usd=0.00123,
    endpoint="a",
    created_at=1_700_000_000.5,
    expires_at=1_700_003_600.5,
)


@pytest.mark.parametrize("key", [None, b"secret"])
def test_round_trip(key: bytes | None) -> None:
    codec = EntryCodec(key)
    assert codec.decode(codec.encode(ENTRY)) == ENTRY


def test_a_streamed_entry_keeps_its_chunking_as_bytes() -> None:
    codec = EntryCodec(b"k")
    streamed = CacheEntry(
        body=ENTRY.body,
        usage=ENTRY.usage,
        cost_usd=None,
        endpoint="a",
        created_at=1,
        expires_at=2,
        stream=b'[{"delta":{"content":"h\xc3\xa9"}}]',
    )
    assert codec.decode(codec.encode(streamed)) == streamed
    assert codec.decode(codec.encode(ENTRY)).stream is None


def test_unknown_cost_round_trips_as_none() -> None:
    codec = EntryCodec()
    unknown = CacheEntry(
        body=ENTRY.body, usage=ENTRY.usage, cost_usd=None, endpoint="a", created_at=1, expires_at=2
    )
    assert codec.decode(codec.encode(unknown)).cost_usd is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"LP\x09\x00{}",
        b"LP\x01\x00{}",
        b"LP\x01\x00" + bytes(70),
        b"LP\x01\x00" + bytes(66) + b"\x00\x00\x09\x00\x00\x00{not json",
        b"LP\x01\x00" + bytes(66) + b"\x00\x00\x02\x00\x00\x00[]",
        b"LP\x01\x00" + bytes(66) + b"\x05\x00\x02\x00\x00\x00ab",
    ],
)
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CacheCorruptError):
        EntryCodec().decode(data)


def test_signed_entries_fail_under_another_key() -> None:
    data = EntryCodec(b"a").encode(ENTRY)
    with pytest.raises(CacheCorruptError, match="signature"):
        EntryCodec(b"b").decode(data)


def test_tampered_payload_fails_its_signature() -> None:
    data = bytearray(EntryCodec(b"a").encode(ENTRY))
    data[-3] ^= 1
    with pytest.raises(CacheCorruptError, match="signature"):
        EntryCodec(b"a").decode(bytes(data))


def test_a_keyed_codec_rejects_unsigned_entries() -> None:
    with pytest.raises(CacheCorruptError, match="not signed"):
        EntryCodec(b"a").decode(EntryCodec().encode(ENTRY))


def test_an_unkeyed_codec_still_reads_signed_entries() -> None:
    assert EntryCodec().decode(EntryCodec(b"a").encode(ENTRY)) == ENTRY

"""The entry codec every backend shares: round trip, versioning, key binding, signatures,
and the shape of what it lets through."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import orjson
import pytest

from limpet.cache.base import ENTRY_FORMAT, CacheEntry, EntryCodec, servable, stored_chunks
from limpet.errors import CacheCorruptError
from limpet.models import Usage
from limpet.pipeline.completions import storable

KEY = "k" * 64
ENTRY = CacheEntry(
    body={"id": "gen-1", "choices": [{"message": {"role": "assistant", "content": "hé ✓"}}]},
    usage=Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4, cache_write_tokens=2),
    cost_usd=0.00123,
    endpoint="a",
    created_at=1_700_000_000.5,
    expires_at=1_700_003_600.5,
)
CHUNKING = orjson.dumps(
    {"envelope": {"id": "gen-1"}, "chunks": [{"choices": [{"delta": {"content": "hé"}}]}]}
)
STREAMED = CacheEntry(
    body=ENTRY.body,
    usage=ENTRY.usage,
    cost_usd=None,
    endpoint="a",
    created_at=1,
    expires_at=2,
    stream=CHUNKING,
)


def with_body(body: Any) -> CacheEntry:
    return CacheEntry(body, ENTRY.usage, None, "a", 1, 2)


@pytest.mark.parametrize("hmac_key", [None, b"secret"])
def test_round_trip(hmac_key: bytes | None) -> None:
    codec = EntryCodec(hmac_key)
    assert codec.decode(KEY, codec.encode(KEY, ENTRY)) == ENTRY


@pytest.mark.parametrize("hmac_key", [None, b"secret"])
def test_audio_counts_round_trip(hmac_key: bytes | None) -> None:
    # Audio is priced apart from text: a hit must report the very counts of its miss.
    codec = EntryCodec(hmac_key)
    usage = Usage(
        prompt_tokens=100,
        completion_tokens=20,
        cached_tokens=30,
        prompt_audio_tokens=90,
        cached_audio_tokens=25,
        completion_audio_tokens=15,
    )
    audio = CacheEntry(ENTRY.body, usage, 0.5, "a", 1, 2)
    decoded = codec.decode(KEY, codec.encode(KEY, audio)).usage
    assert decoded == usage
    assert (decoded.prompt_audio_tokens, decoded.cached_audio_tokens) == (90, 25)
    assert decoded.completion_audio_tokens == 15


def test_the_format_byte_is_the_entry_format() -> None:
    assert EntryCodec().encode(KEY, ENTRY)[:4] == b"LP" + bytes((ENTRY_FORMAT, 0))
    assert EntryCodec(b"k").encode(KEY, ENTRY)[:4] == b"LP" + bytes((ENTRY_FORMAT, 1))


def test_a_streamed_entry_keeps_its_chunking_as_bytes() -> None:
    codec = EntryCodec(b"k")
    assert codec.decode(KEY, codec.encode(KEY, STREAMED)) == STREAMED
    assert codec.decode(KEY, codec.encode(KEY, ENTRY)).stream is None


def test_unknown_cost_round_trips_as_none() -> None:
    codec = EntryCodec()
    unknown = with_body(ENTRY.body)
    assert codec.decode(KEY, codec.encode(KEY, unknown)).cost_usd is None


def test_the_format_before_this_one_is_corrupt() -> None:
    data = EntryCodec().encode(KEY, ENTRY)
    older = data[:2] + bytes((ENTRY_FORMAT - 1,)) + data[3:]
    with pytest.raises(CacheCorruptError, match="format"):
        EntryCodec().decode(KEY, older)


# counts, cost and times, five lengths, flags
META_SIZE = 9 * 8 + 3 * 8 + 4 + 2 + 4 + 4 + 2 + 1
SERVABLE = 4


def test_the_layout_is_what_these_tests_assume() -> None:
    data = EntryCodec().encode(KEY, ENTRY)
    assert data.index(KEY.encode()) == 4 + 4 + META_SIZE
    assert int.from_bytes(data[4:8], "little") == zlib.crc32(data[8:])


def _garbage() -> list[bytes]:
    """Entries with a good checksum (or none) that are wrong in one way each."""
    header = b"LP" + bytes((ENTRY_FORMAT, 0))
    key = KEY.encode()
    meta = struct.Struct("<9Q3dIHIIHB")
    assert meta.size == META_SIZE

    def meta_for(
        name: int, body: int, stream: int = 0, bound: int = len(key), flags: int = SERVABLE
    ) -> bytes:
        return meta.pack(
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 1.0, 2.0, bound, name, body, stream, 0, flags
        )

    def summed(payload: bytes) -> bytes:
        return header + struct.pack("<I", zlib.crc32(payload)) + payload

    return [
        b"",
        b"garbage",
        b"LP\x09\x00{}",
        header + b"{}",
        summed(bytes(meta.size - 1)),
        summed(meta_for(0, 0)),
        header + b"\x00\x00\x00\x00" + meta_for(0, 2) + key + b"{}",  # a bad checksum
        summed(meta_for(0, 2, flags=0) + key + b"{}"),  # not servable when stored
        summed(meta_for(5, 2) + key + b"ab"),
        summed(meta_for(1, 2) + key + b"\xff{}"),
        summed(meta_for(0, 2, 10) + key + b"{}"),  # a truncated stream
        summed(meta_for(0, 2) + key + b"{}" + b"extra"),
        summed(meta_for(0, 2, bound=len(key) - 1) + key + b"{}"),  # a shorter key
    ]


@pytest.mark.parametrize("data", _garbage())
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CacheCorruptError):
        EntryCodec().decode(KEY, data)


@pytest.mark.parametrize("hmac_key", [None, b"secret"])
def test_every_truncation_is_corrupt(hmac_key: bytes | None) -> None:
    codec = EntryCodec(hmac_key)
    data = codec.encode(KEY, STREAMED)
    for size in range(len(data)):
        with pytest.raises(CacheCorruptError):
            codec.decode(KEY, data[:size])


@pytest.mark.parametrize("hmac_key", [None, b"secret"])
def test_an_entry_read_under_another_key_is_corrupt(hmac_key: bytes | None) -> None:
    codec = EntryCodec(hmac_key)
    with pytest.raises(CacheCorruptError, match="another key"):
        codec.decode("other", codec.encode(KEY, ENTRY))


def test_a_signed_entry_whose_key_is_rewritten_fails_its_signature() -> None:
    codec = EntryCodec(b"a")
    other = "o" * len(KEY)
    forged = codec.encode(KEY, ENTRY).replace(KEY.encode(), other.encode())
    with pytest.raises(CacheCorruptError, match="signature"):
        codec.decode(other, forged)
    # Without the HMAC key anyone can write any entry (checksum included); a moved one
    # is still caught.
    payload = forged[4 + 32 + 4 :]
    resummed = forged[: 4 + 32] + zlib.crc32(payload).to_bytes(4, "little") + payload
    assert EntryCodec().decode(other, resummed) == ENTRY
    with pytest.raises(CacheCorruptError, match="checksum"):
        EntryCodec().decode(other, forged)


def test_signed_entries_fail_under_another_hmac_key() -> None:
    data = EntryCodec(b"a").encode(KEY, ENTRY)
    with pytest.raises(CacheCorruptError, match="signature"):
        EntryCodec(b"b").decode(KEY, data)


def test_tampered_payload_fails_its_signature() -> None:
    data = bytearray(EntryCodec(b"a").encode(KEY, ENTRY))
    data[-3] ^= 1
    with pytest.raises(CacheCorruptError, match="signature"):
        EntryCodec(b"a").decode(KEY, bytes(data))


def test_a_keyed_codec_rejects_unsigned_entries() -> None:
    with pytest.raises(CacheCorruptError, match="not signed"):
        EntryCodec(b"a").decode(KEY, EntryCodec().encode(KEY, ENTRY))


def test_an_unkeyed_codec_still_reads_signed_entries_but_checks_their_key() -> None:
    data = EntryCodec(b"a").encode(KEY, ENTRY)
    assert EntryCodec().decode(KEY, data) == ENTRY
    with pytest.raises(CacheCorruptError, match="another key"):
        EntryCodec().decode("other", data)


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"choices": None},
        {"choices": []},
        {"choices": {"message": {}}},
        {"choices": [1]},
        {"choices": [{}]},
        {"choices": [{"message": "hi"}]},
        {"choices": [{"message": None}]},
        {"choices": [{"message": {}}, {"text": "x"}]},
        {"choices": [{"message": {"tool_calls": "call"}}]},
        {"choices": [{"message": {"tool_calls": [1]}}]},
        {"choices": [{"message": {}}], "model": 5},
    ],
)
@pytest.mark.parametrize("hmac_key", [None, b"secret"])
def test_an_ill_shaped_body_is_corrupt_even_when_signed(body: Any, hmac_key: bytes | None) -> None:
    codec = EntryCodec(hmac_key)
    with pytest.raises(CacheCorruptError, match="body"):
        codec.decode(KEY, codec.encode(KEY, with_body(body)))


def test_non_finite_times_are_corrupt() -> None:
    codec = EntryCodec()
    entry = CacheEntry(ENTRY.body, ENTRY.usage, None, "a", 1, float("nan"))
    with pytest.raises(CacheCorruptError, match="finite"):
        codec.decode(KEY, codec.encode(KEY, entry))


def test_stored_chunks_merge_the_envelope() -> None:
    assert stored_chunks(CHUNKING) == [{"id": "gen-1", "choices": [{"delta": {"content": "hé"}}]}]


@pytest.mark.parametrize(
    "chunking",
    [
        CHUNKING[:-1],
        b"",
        b"[]",
        b'{"envelope": {}}',
        b'{"envelope": [], "chunks": []}',
        b'{"envelope": {}, "chunks": {}}',
        b'{"envelope": {}, "chunks": [1]}',
        b'{"envelope": {}, "chunks": [{"choices": 5}]}',
        b'{"envelope": {}, "chunks": [{"choices": [5]}]}',
        b'{"envelope": {}, "chunks": [{"choices": {"0": {}}}]}',
    ],
)
def test_an_ill_shaped_stored_stream_is_corrupt(chunking: bytes) -> None:
    with pytest.raises(CacheCorruptError, match="stored stream"):
        stored_chunks(chunking)


_ANSWER = {"message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"}


@pytest.mark.parametrize(
    "body",
    [
        {"choices": []},
        {"choices": [{"message": None}]},
        {},
        # Any choice's tool calls, not only the first's: a stream replays every choice.
        {"choices": [_ANSWER, {"message": {"role": "assistant", "tool_calls": ["oops"]}}]},
        {"choices": [_ANSWER, {"message": {"role": "assistant", "tool_calls": [None]}}]},
        {"choices": [_ANSWER, {"message": {"role": "assistant", "tool_calls": {}}}]},
    ],
)
def test_what_would_read_back_as_corrupt_is_never_stored(body: dict[str, Any]) -> None:
    assert not servable(body)
    assert not storable(with_body(body))
    assert storable(with_body(ENTRY.body)) and servable(ENTRY.body)
    failed = {"choices": [{"message": {}, "finish_reason": "error"}]}
    assert servable(failed) and not storable(with_body(failed))

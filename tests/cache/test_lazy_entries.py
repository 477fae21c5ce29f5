"""Entries whose body is parsed on first use, and completions that copy it on first
touch: what they read equals what eager decoding and copying gave, and no reader can
change what another reads."""

from __future__ import annotations

import asyncio
import copy
import pickle
import zlib
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet import CacheStatus, Client, Completion, Endpoint
from limpet.cache.base import CacheEntry, EntryCodec
from limpet.errors import CacheCorruptError
from limpet.models import Usage, json_copy
from limpet.pipeline.completions import completion_of
from limpet.testing import FakeGateway

KEY = "k" * 64

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.none() | st.text(max_size=50)},
    optional={"extra": json_values},
)
choices = st.fixed_dictionaries(
    {"message": messages},
    optional={"finish_reason": st.none() | st.sampled_from(["stop", "length"]), "x": json_values},
)
bodies = st.fixed_dictionaries(
    {"choices": st.lists(choices, min_size=1, max_size=3)},
    optional={
        "model": st.text(max_size=20),
        "usage": st.none() | st.dictionaries(st.sampled_from(["prompt_tokens", "x"]), scalars),
        "id": json_values,
    },
)


def entry_of(body: dict[str, Any], cost: float | None = 0.5) -> CacheEntry:
    return CacheEntry(body, Usage(3, 4), cost, "a", 1.0, 2.0)


@given(bodies, st.sampled_from([None, b"secret"]), st.sampled_from([None, 0.25]))
def test_a_lazily_decoded_entry_reads_as_the_eager_one(
    body: dict[str, Any], hmac_key: bytes | None, cost: float | None
) -> None:
    codec = EntryCodec(hmac_key)
    eager = entry_of(orjson.loads(orjson.dumps(body)), cost)
    lazy = codec.decode(KEY, codec.encode(KEY, eager))
    assert lazy.model == eager.model
    assert lazy.body_has_usage == eager.body_has_usage
    for status in (CacheStatus.HIT, CacheStatus.COALESCED, CacheStatus.MISS):
        served, expected = completion_of(lazy, status, KEY), completion_of(eager, status, KEY)
        assert (served.content, served.finish_reason) == (expected.content, expected.finish_reason)
        assert served == expected and served.raw == body and served.message == expected.message
    assert lazy == eager


@given(json_values)
def test_json_copy_equals_a_round_trip_and_shares_no_container(value: Any) -> None:
    copied = json_copy(value)
    assert copied == orjson.loads(orjson.dumps(value))
    assert not _containers(copied) & _containers(value)


def _containers(value: Any) -> set[int]:
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.add(id(item))
            stack.extend(item.values())
        elif isinstance(item, list):
            found.add(id(item))
            stack.extend(item)
    return found


def test_an_unsigned_entry_with_a_good_checksum_and_a_bad_body_is_corrupt_as_decoded() -> None:
    # Regression: its body was parsed on first use, after it was served as a hit: each
    # caller got a Completion whose .content raised, and the entry was never deleted.
    data = EntryCodec().encode(KEY, entry_of({"choices": [{"message": {"content": "hi!"}}]}))
    payload = data[8:].replace(b'"hi!"', b'"hi!!').replace(b"}}]}", b"}}]}")
    forged = data[:4] + zlib.crc32(payload).to_bytes(4, "little") + payload
    with pytest.raises(CacheCorruptError, match="malformed"):
        EntryCodec().decode(KEY, forged)


@pytest.mark.parametrize("status", list(CacheStatus))
def test_readers_of_one_entry_never_see_each_others_changes(status: CacheStatus) -> None:
    entry = entry_of({"model": "m", "choices": [{"message": {"content": "hi", "n": [1]}}]})
    first, second = (completion_of(entry, status, KEY) for _ in "ab")
    first.raw["choices"][0]["message"]["n"].append(2)
    first.message["content"] = "changed"
    first.usage.prompt_tokens = 99
    assert first.usage is not entry.usage and first.usage is first.usage
    assert second.content == "hi" and second.message == {"content": "hi", "n": [1]}
    assert second.usage.prompt_tokens == 3 and entry.usage.prompt_tokens == 3
    assert entry.body["choices"][0]["message"] == {"content": "hi", "n": [1]}
    assert first.content == "changed" and first.usage.prompt_tokens == 99  # its own copies


def test_a_usage_set_on_a_shared_completion_is_the_one_it_reads() -> None:
    entry = entry_of({"model": "m", "choices": [{"message": {"content": "hi"}}]})
    served = completion_of(entry, CacheStatus.HIT, KEY)
    mine = Usage(7, 8)
    served.usage = mine
    assert served.usage is mine and entry.usage == Usage(3, 4)


def test_a_shared_completion_is_a_completion_in_every_way() -> None:
    entry = entry_of({"model": "m", "choices": [{"message": {"content": "hi"}}]})
    served = completion_of(entry, CacheStatus.HIT, KEY)
    plain = Completion(served.raw, "m", served.usage, served.cost, CacheStatus.HIT, "a", KEY)
    assert isinstance(served, Completion) and served == plain and plain == served
    assert repr(served) == repr(plain)
    assert isinstance(replace(served), Completion) and replace(served) == plain
    assert type(copy.deepcopy(served)) is Completion and copy.deepcopy(served) == plain
    assert pickle.loads(pickle.dumps(served)) == plain
    served.raw = {"choices": [{"message": {"content": "set"}}]}
    assert served.content == "set"


async def test_coalesced_callers_share_one_answer_and_cannot_change_each_others() -> None:
    async with FakeGateway(endpoints=("a",)) as gateway:
        gateway.endpoint("a").latency = 0.2
        ask: dict[str, Any] = {
            "model": "openai/gpt-5-mini",
            "messages": [{"role": "user", "content": "Where do limpets live?"}],
            "temperature": 0,
        }
        async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
            served = await asyncio.gather(*(client.complete(**ask) for _ in range(20)))
            assert gateway.total_calls == 1
            statuses = sorted(c.cache for c in served)
            assert statuses.count(CacheStatus.COALESCED) == 19
            expected = orjson.loads(orjson.dumps(served[0].raw))
            for completion in served:
                completion.raw["choices"][0]["message"]["content"] = "mine"
                completion.raw["tampered"] = True
            hit = await client.complete(**ask)
            assert hit.cache is CacheStatus.HIT and hit.raw == expected


def test_rereading_the_same_bytes_shares_the_entry_but_no_caller_shares_a_usage() -> None:
    codec = EntryCodec()
    data = codec.encode(KEY, entry_of({"model": "m", "choices": [{"message": {"content": "a"}}]}))
    first, second = codec.decode(KEY, data), codec.decode(KEY, data)
    assert first is second  # decoded and checked once, read only
    served = completion_of(first, CacheStatus.HIT, KEY)
    served.usage.prompt_tokens = 99
    served.raw["choices"][0]["message"]["content"] = "b"
    again = completion_of(codec.decode(KEY, data), CacheStatus.HIT, KEY)
    assert again.usage.prompt_tokens == 3 and again.content == "a"
    assert again == completion_of(codec.decode_new(KEY, data), CacheStatus.HIT, KEY)


@given(bodies, st.sampled_from([None, b"secret"]), st.sampled_from([None, 0.25]))
def test_a_hit_after_another_caller_changed_its_answer_reads_as_a_fresh_decode(
    body: dict[str, Any], hmac_key: bytes | None, cost: float | None
) -> None:
    codec = EntryCodec(hmac_key)
    data = codec.encode(KEY, entry_of(orjson.loads(orjson.dumps(body)), cost))
    first = completion_of(codec.decode(KEY, data), CacheStatus.HIT, KEY)
    first.raw["choices"][0]["message"]["content"] = "changed"
    first.raw["choices"].append({"message": {}})
    first.usage.prompt_tokens += 1
    first.usage.reported = not first.usage.reported
    served = completion_of(codec.decode(KEY, data), CacheStatus.HIT, KEY)
    fresh = completion_of(codec.decode_new(KEY, data), CacheStatus.HIT, KEY)
    assert served == fresh and served.raw == body and served.usage == fresh.usage


def test_other_bytes_under_a_remembered_key_are_checked_afresh() -> None:
    codec = EntryCodec()
    data = codec.encode(KEY, entry_of({"choices": [{"message": {"content": "a"}}]}))
    codec.decode(KEY, data)
    flipped = data[:-3] + bytes((data[-3] ^ 1,)) + data[-2:]
    with pytest.raises(CacheCorruptError, match="checksum"):
        codec.decode(KEY, flipped)
    with pytest.raises(CacheCorruptError, match="another key"):
        codec.decode("other", data)

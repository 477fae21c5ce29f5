"""The key memo: whatever it holds or forgets, a key is SHA-256 of the bytes hashed."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.generations import Generations
from limpet.pipeline.key_memo import KeyMemo
from limpet.pipeline.keying import Keying
from limpet.pipeline.keys import canonical_request, request_key
from tests.test_keys import requests


@given(
    st.lists(st.binary(max_size=40), max_size=60),
    st.integers(1, 8),
    st.integers(16, 400),
)
def test_a_memo_gives_sha256_whatever_it_holds(
    inputs: list[bytes], max_entries: int, max_bytes: int
) -> None:
    memo = KeyMemo(max_entries=max_entries, max_bytes=max_bytes)
    for data in inputs:
        key = memo.get(data) or memo.add(data)
        assert key == hashlib.sha256(data).hexdigest()
        assert len(memo) <= max_entries
        assert memo.get(data) in (None, key)


def test_a_memo_forgets_the_oldest_and_never_holds_a_large_input() -> None:
    memo = KeyMemo(max_entries=2, max_bytes=16 * 10)
    for data in (b"a", b"b", b"c"):
        memo.add(data)
    assert (memo.get(b"a"), memo.get(b"c")) == (None, hashlib.sha256(b"c").hexdigest())
    memo.add(b"x" * 11)  # over a sixteenth of max_bytes
    assert memo.get(b"x" * 11) is None


@given(st.lists(requests, min_size=1, max_size=4), st.sampled_from([None, {"X-Request-Id": "1"}]))
def test_keys_from_the_memo_are_request_keys(
    bodies: list[dict[str, Any]], sent: dict[str, str] | None
) -> None:
    keying = Keying(Generations(), "tenant-a", "c0ffee")
    for body in [*bodies, *bodies]:  # the second time round, from the memo
        key = keying.now(body, sent)
        scope = keying.generations.scope_now(body["model"])
        assert scope is not None
        expected = request_key(
            canonical_request(body), namespace="tenant-a", scope=scope, credential="c0ffee"
        )
        assert key == expected == asyncio.run(keying.of(body, sent))


def test_a_bumped_generation_changes_the_key_the_memo_gives() -> None:
    keying = Keying(Generations(), "", "")
    body = {"model": "a/m1", "messages": [{"role": "user", "content": "hi"}]}
    before = keying.now(body, None)
    assert keying.now(body, None) == before
    asyncio.run(keying.generations.bump("a/m1"))
    after = keying.now(body, None)
    assert after is not None and after != before
    scope = keying.generations.scope_now("a/m1")
    assert scope is not None
    assert after == request_key(canonical_request(body), scope=scope)


@given(requests, st.lists(st.sampled_from(["sk-a", "sk-b", "sk-c"]), min_size=2, max_size=8))
def test_callers_with_their_own_keys_never_get_each_others_key_from_the_memo(
    body: dict[str, Any], callers: list[str]
) -> None:
    keying = Keying(Generations(), "tenant-a", "c0ffee")
    keys: dict[str, str | None] = {}
    for api_key in callers:  # interleaved, each key asked for again and again
        sent = {"Authorization": f"Bearer {api_key}"}
        key = keying.now(body, sent)
        keys.setdefault(api_key, key)
        assert key == keys[api_key] == asyncio.run(keying.of(body, sent))
    assert len(set(keys.values())) == len(keys)  # one key per credential, none shared
    assert keying.now(body, None) not in keys.values()  # nor with the Client's own

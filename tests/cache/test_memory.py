"""MemoryCache: LRU by count and by bytes, TTL on an injected clock."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.memory import MemoryCache
from limpet.errors import ConfigurationError
from tests.fakes import FakeClock


async def test_evicts_least_recently_used_by_count() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        await cache.set(key, key.encode(), ttl=60)
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("d", b"d", ttl=60)
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    assert len(cache) == 3


async def test_evicts_by_bytes_counting_keys_and_values() -> None:
    cache = MemoryCache(max_bytes=100)
    await cache.set("k1", b"x" * 40, ttl=60)  # 42 bytes
    await cache.set("k2", b"y" * 40, ttl=60)  # 84
    assert cache.nbytes == 84
    await cache.set("k3", b"z" * 40, ttl=60)  # 126 > 100: k1 goes
    assert await cache.get("k1") is None
    assert cache.nbytes == 84
    assert await cache.get("k2") == b"y" * 40


async def test_a_value_larger_than_the_whole_cache_is_not_stored() -> None:
    cache = MemoryCache(max_bytes=10)
    await cache.set("small", b"ok", ttl=60)
    await cache.set("huge", b"x" * 50, ttl=60)
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"ok"


async def test_overwrite_replaces_value_and_byte_count() -> None:
    cache = MemoryCache()
    await cache.set("k", b"x" * 10, ttl=60)
    await cache.set("k", b"y" * 3, ttl=60)
    assert await cache.get("k") == b"yyy"
    assert cache.nbytes == 1 + 3
    assert len(cache) == 1


async def test_ttl_expiry_on_the_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.set("short", b"s", ttl=5)
    await cache.set("long", b"l", ttl=50)
    clock.advance(4.999)
    assert await cache.get("short") == b"s"
    clock.advance(0.001)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"l"
    assert len(cache) == 1
    assert cache.nbytes == len("long") + 1


async def test_delete_and_clear() -> None:
    cache = MemoryCache()
    await cache.set("a", b"1", ttl=60)
    await cache.set("b", b"2", ttl=60)
    await cache.delete("a")
    await cache.delete("missing")
    assert await cache.get("a") is None
    await cache.clear()
    assert len(cache) == 0
    assert cache.nbytes == 0


@pytest.mark.parametrize("field", ["max_entries", "max_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bounds_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"MemoryCache.{field}"):
        MemoryCache(**{field: value})  # type: ignore[arg-type]


# One step of the model test: ("set", key, size, ttl) | ("get", key) | ("delete", key) |
# ("advance", seconds).
_steps = st.one_of(
    st.tuples(
        st.just("set"),
        st.sampled_from("abcdef"),
        st.integers(0, 40),
        st.sampled_from([-1.0, 0.0, 1.0, 5.0]),
    ),
    st.tuples(st.just("get"), st.sampled_from("abcdef")),
    st.tuples(st.just("delete"), st.sampled_from("abcdef")),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0])),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_steps, max_size=60), max_entries=st.integers(1, 4))
def test_behaves_as_a_plain_lru_with_ttls(steps: list[tuple[Any, ...]], max_entries: int) -> None:
    """Every read, the entry count and the byte count agree with a plain model (an
    OrderedDict of key -> (expires_at, value), the least recently used first), whatever
    sets, reads, deletes and passing time come in what order."""
    clock = FakeClock()
    cache = MemoryCache(max_entries=max_entries, max_bytes=64, clock=clock)
    model: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
    for n, step in enumerate(steps):
        if step[0] == "set":
            _, key, size, ttl = step
            value = bytes([n % 256]) * size
            cache.set_now(key, value, ttl)
            model.pop(key, None)
            if ttl > 0 and len(key) + size <= 64:
                model[key] = (clock() + ttl, value)
                while (
                    len(model) > max_entries
                    or sum(len(k) + len(v) for k, (_, v) in model.items()) > 64
                ):
                    model.popitem(last=False)
        elif step[0] == "get":
            key = step[1]
            item = model.get(key)
            expected = None
            if item is not None and item[0] > clock():
                expected = item[1]
                model.move_to_end(key)
            elif item is not None:
                del model[key]
            assert cache.get_now(key) == expected
        elif step[0] == "delete":
            asyncio.run(cache.delete(step[1]))
            model.pop(step[1], None)
        else:
            clock.advance(step[1])
        assert len(cache) == len(model)
        assert cache._expiry.keys() == cache._entries.keys()  # no expiry left behind
        assert cache.nbytes == sum(len(k) + len(v) for k, (_, v) in model.items())

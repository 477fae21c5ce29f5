"""Large requests are keyed piece by piece: the same bytes, the same key, and the loop
gets its turn while they are hashed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.errors import InvalidRequestError
from limpet.pipeline import keys
from limpet.pipeline.keys import (
    canonical_pieces,
    canonical_request,
    is_large,
    request_key,
    request_key_async,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)
bodies = st.dictionaries(
    st.sampled_from(
        ["model", "messages", "temperature", "user", "stream", "tools", "response_format", "é"]
    ),
    values,
)


@given(bodies, st.integers(1, 64))
def test_the_pieces_join_into_the_canonical_request(body: dict[str, Any], piece: int) -> None:
    try:
        expected = canonical_request(body)
    except InvalidRequestError:  # e.g. 1e300 written as an int past 64 bits
        with pytest.raises(InvalidRequestError):
            b"".join(canonical_pieces(body, piece))
        return
    assert b"".join(canonical_pieces(body, piece)) == expected


@pytest.mark.parametrize("bad", [{1, 2}, object(), {"x": {3: "int key"}}])
def test_what_is_not_json_fails_as_it_does_whole(bad: object) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 100, "bad": bad}]}
    with pytest.raises(InvalidRequestError):
        canonical_request(body)
    with pytest.raises(InvalidRequestError):
        b"".join(canonical_pieces(body, 8))


def big_request(messages: int, size: int) -> dict[str, Any]:
    text = "A limpet's tooth is the strongest biological material known. é✓ " * (size // 64)
    return {
        "model": "m",
        "messages": [{"role": "user", "content": f"{i} {text}"} for i in range(messages)],
        "temperature": 0.0,
        "user": "u",
    }


@pytest.mark.parametrize(("messages", "size"), [(1, 2_000_000), (2_000, 100), (3, 10)])
async def test_the_async_key_is_the_key(messages: int, size: int) -> None:
    body = big_request(messages, size)
    expected = request_key(canonical_request(body), namespace="n", scope="s", credential="c")
    assert await request_key_async(body, namespace="n", scope="s", credential="c") == expected
    assert is_large(body) == (messages * size > 100_000)


async def test_a_large_request_lets_the_loop_run_while_it_is_hashed() -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await request_key_async(big_request(1, 2 * keys.LARGE_REQUEST_BYTES))
    done = True
    await task
    assert ticks - before >= 3

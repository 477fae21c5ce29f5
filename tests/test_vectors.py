"""The pure parts of embeddings: float32 packing, merging by index, batch plans, the codec."""

from __future__ import annotations

import array
import base64
import enum
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache import MemoryCache, TieredCache
from limpet.errors import CacheCorruptError, InvalidRequestError
from limpet.pipeline.keys import request_key, request_keys
from limpet.pipeline.vectors import (
    MAX_DIMENSIONS,
    Vector,
    VectorCodec,
    cost_shares,
    embedding_params,
    encoded_inputs,
    estimate_tokens,
    item_canonical,
    item_prefix,
    merge_by_index,
    pack_floats,
    plan_batches,
    unpack_floats,
    validate_inputs,
    vector_bytes,
)
from tests.fakes import FakeClock

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
vectors = st.lists(float32s, min_size=1, max_size=64)


@given(vectors)
def test_float32_values_survive_packing_exactly(values: list[float]) -> None:
    assert unpack_floats(pack_floats(values)) == values


@given(vectors)
def test_base64_and_float_lists_decode_to_the_same_bytes(values: list[float]) -> None:
    packed = pack_floats(values)
    assert vector_bytes(base64.b64encode(packed).decode()) == packed
    assert vector_bytes(values) == packed


@pytest.mark.parametrize("bad", ["not base64!", "AAA=", [], ["1"], None, {"a": 1}])
def test_an_embedding_that_is_not_a_vector_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        vector_bytes(bad)


def test_a_non_finite_component_is_refused() -> None:
    with pytest.raises(ValueError):
        pack_floats([1.0, float("nan")])


@given(vectors, st.integers(0, 63), st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_a_non_finite_component_is_refused_in_either_form(
    values: list[float], at: int, bad: float
) -> None:
    values = [*values[:at], bad, *values[at:]]
    packed = array.array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    with pytest.raises(ValueError, match="finite"):
        vector_bytes(base64.b64encode(packed.tobytes()).decode())
    with pytest.raises(ValueError, match="finite"):
        vector_bytes(values)


def vectors_of_one_length(min_size: int, max_size: int) -> st.SearchStrategy[list[list[float]]]:
    """Lists of vectors sharing one length, as one upstream answer's are."""
    same = st.integers(1, 64).map(lambda n: st.lists(float32s, min_size=n, max_size=n))
    return same.flatmap(lambda vector: st.lists(vector, min_size=min_size, max_size=max_size))


@given(vectors_of_one_length(1, 30), st.randoms(use_true_random=False))
def test_merge_places_every_vector_by_its_index_whatever_the_order(
    items: list[list[float]], rng: random.Random
) -> None:
    data = [{"index": i, "embedding": v} for i, v in enumerate(items)]
    rng.shuffle(data)
    merged = merge_by_index(data, len(items))
    assert [unpack_floats(m) for m in merged] == items


@given(st.lists(vectors, min_size=2, max_size=8), st.data())
def test_merge_refuses_vectors_of_another_length_than_asked_or_than_each_other(
    items: list[list[float]], data: st.DataObject
) -> None:
    wanted = data.draw(st.none() | st.integers(1, 64), label="dimensions")
    answer = [{"index": i, "embedding": v} for i, v in enumerate(items)]
    lengths = {len(v) for v in items}
    if lengths == {wanted} or (wanted is None and len(lengths) == 1):
        assert [unpack_floats(m) for m in merge_by_index(answer, len(items), wanted)] == items
    else:
        with pytest.raises(ValueError, match="components, expected"):
            merge_by_index(answer, len(items), wanted)


@pytest.mark.parametrize(
    ("indices", "problem"),
    [([0, 0], "twice"), ([0], "lacks"), ([0, 2], "index 2"), ([0, "1"], "index '1'")],
)
def test_merge_checks_every_index_came_back_exactly_once(
    indices: list[object], problem: str
) -> None:
    data = [{"index": i, "embedding": [1.0]} for i in indices]
    with pytest.raises(ValueError, match=problem):
        merge_by_index(data, 2)


@given(
    st.lists(st.integers(0, 50), max_size=200),
    st.integers(1, 20),
    st.none() | st.integers(1, 100),
)
def test_batches_cover_every_item_in_order_within_their_limits(
    tokens: list[int], max_items: int, max_tokens: int | None
) -> None:
    batches = plan_batches(tokens, max_items, max_tokens)
    assert [i for batch in batches for i in batch] == list(range(len(tokens)))
    for batch in batches:
        assert 1 <= len(batch) <= max_items
        if max_tokens is not None and len(batch) > 1:
            assert sum(tokens[i] for i in batch) <= max_tokens


def test_a_full_batch_plan_uses_as_few_requests_as_the_size_allows() -> None:
    assert [len(b) for b in plan_batches([0] * 1100, 512)] == [512, 512, 76]


costs = st.none() | st.floats(min_value=0.0, max_value=1.0)


def priced(values: list[float], cost: float | None = 1e-6) -> Vector:
    return Vector(pack_floats(values), cost)


@given(vectors, st.text(min_size=1, max_size=40), st.booleans(), costs)
def test_the_codec_round_trips_a_vector_and_its_cost_under_its_own_key(
    values: list[float], key: str, signed: bool, cost: float | None
) -> None:
    codec = VectorCodec(b"k" * 32 if signed else None)
    vector = priced(values, cost)
    assert codec.decode(key, codec.encode(key, vector, 1234.5)) == (vector, 1234.5)


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=64), costs)
def test_a_requests_cost_is_shared_by_its_inputs_tokens_and_unknown_stays_unknown(
    tokens: list[int], cost: float | None
) -> None:
    shares = cost_shares(tokens, cost)
    if cost is None:
        assert shares == [None] * len(tokens)
        return
    known = [share for share in shares if share is not None]
    assert len(known) == len(tokens) and sum(known) == pytest.approx(cost)
    if sum(tokens):
        total = sum(tokens)
        assert known == pytest.approx([cost * size / total for size in tokens])


def test_a_vector_read_under_another_key_truncated_or_unsigned_is_corrupt() -> None:
    codec = VectorCodec()
    data = codec.encode("k1", priced([1.0, 2.0]), 10.0)
    for key, bad in (("k2", data), ("k1", data[:-1]), ("k1", data + b"\0\0\0\0")):
        with pytest.raises(CacheCorruptError):
            codec.decode(key, bad)
    with pytest.raises(CacheCorruptError, match="not signed"):
        VectorCodec(b"secret").decode("k1", data)
    signed = VectorCodec(b"secret").encode("k1", priced([1.0]), 10.0)
    with pytest.raises(CacheCorruptError, match="signature"):
        VectorCodec(b"other").decode("k1", signed)


@settings(max_examples=300)
@given(
    values=st.lists(float32s, min_size=1, max_size=16),
    others=st.lists(float32s, min_size=1, max_size=16),
    kind=st.sampled_from(["flip", "splice", "graft"]),
    at=st.integers(0, 2**16),
    mask=st.integers(1, 255),
    noise=st.binary(min_size=1, max_size=8),
)
def test_a_changed_unsigned_vector_is_corrupt_never_another_vector(
    values: list[float], others: list[float], kind: str, at: int, mask: int, noise: bytes
) -> None:
    """Bits flipped, bytes overwritten in place, or the tail of another key's vector
    grafted on: unsigned, the entry still decodes to its own vector or is corrupt."""
    codec = VectorCodec()
    data = codec.encode("k1", priced(values), 10.0)
    other = codec.encode("k2", priced(others, 2e-6), 10.0)
    i = at % len(data)
    if kind == "flip":
        changed = data[:i] + bytes((data[i] ^ mask,)) + data[i + 1 :]
    elif kind == "splice":  # overwritten in place: the same length
        changed = (data[:i] + noise + data[i + len(noise) :])[: len(data)]
    else:
        changed = data[:i] + other[i:]
    try:
        vector, _ = codec.decode("k1", changed)
    except CacheCorruptError:
        return
    assert vector == priced(values)


def test_a_completion_entry_never_decodes_as_a_vector() -> None:
    with pytest.raises(CacheCorruptError, match="not a limpet vector"):
        VectorCodec().decode("k", b"LP\x03\x00" + b"\0" * 64)


def test_an_input_key_differs_from_any_chat_requests_canonical_form() -> None:
    canonical = item_canonical("m", "hi", {"dimensions": 4})
    assert not canonical.startswith(b"{")
    assert canonical != item_canonical("m", "hi", {"dimensions": 8})
    assert item_canonical("m", "hi", {"b": 1, "a": 2}) == item_canonical(
        "m", "hi", {"a": 2, "b": 1}
    )


@pytest.mark.parametrize(
    ("given_input", "field"),
    [
        ([], "input"),
        ("", "input"),
        (["a", ""], "input[1]"),
        (["a", "b", 3], "input[2]"),
        (b"bytes", "input"),
        (["a"] * 5, "input[4]"),
        ([[1, 2], "a"], "input[1]"),  # one kind for all
        (["a", [1, 2]], "input[1]"),
        ([[1, 2], []], "input[1]"),
        ([1, -1], "input[1]"),
        ([[1, 2], [3, 2**32]], "input[1][1]"),
        ([[1, True]], "input[0][1]"),
        ([1.0], "input[0]"),
        ([[1]] * 5, "input[4]"),
    ],
)
def test_bad_input_names_the_index(given_input: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_inputs(given_input, max_inputs=4)
    assert caught.value.field == field


class _Doc(enum.StrEnum):
    HELLO = "hello"


def test_inputs_come_as_openai_takes_them_texts_or_token_arrays() -> None:
    assert validate_inputs("a", max_inputs=4) == ["a"]
    # A str subclass (a StrEnum member, numpy's str_) is its text, of exactly str's type.
    for inputs in (validate_inputs(_Doc.HELLO, 4), validate_inputs(["a", _Doc.HELLO], 4)):
        assert inputs[-1] == "hello" and type(inputs[-1]) is str
    assert validate_inputs(["a", "b"], max_inputs=4) == ["a", "b"]
    assert validate_inputs([1, 2, 3], max_inputs=4) == [[1, 2, 3]]  # one token array
    assert validate_inputs(([1], (2, 3)), max_inputs=4) == [[1], [2, 3]]
    assert validate_inputs([0, 2**32 - 1] * 3, max_inputs=4) == [[0, 2**32 - 1] * 3]


@given(
    st.lists(st.text(min_size=1, max_size=8), max_size=5),
    st.lists(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6), min_size=1, max_size=5),
)
def test_a_token_array_never_shares_a_key_with_a_text_or_another_array(
    texts: list[str], arrays: list[list[int]]
) -> None:
    """A token array and the text it may stand for are kept apart (a text's UTF-8 never
    holds the 0xFF that starts an array's encoding), and arrays by their every id."""
    encoded = encoded_inputs([*texts, *arrays])
    distinct = {*texts, *(tuple(array) for array in arrays)}
    assert len(set(encoded)) == len(distinct)
    assert all(one.startswith(b"\xff") for one in encoded[len(texts) :])
    assert encoded_inputs(["[1, 2]", "1,2"]) != encoded_inputs([[1, 2]] * 2)


def test_a_token_arrays_tokens_are_estimated_by_its_length() -> None:
    assert estimate_tokens([5] * 300) == 300
    assert estimate_tokens("word " * 100) == 126


def test_text_in_scripts_of_many_bytes_a_character_is_never_underestimated() -> None:
    """CJK text runs over one token a character (three bytes of UTF-8 each): 4 bytes a
    token would take 200,000 estimated tokens for ~350,000, over OpenAI's limit."""
    assert estimate_tokens("漢字" * 500) >= 1000  # a token a character, at least
    assert estimate_tokens("привет " * 100) >= 600


def test_the_encoding_is_wire_only_and_dimensions_enter_the_key() -> None:
    keyed, wire = embedding_params(4, "float", {"user": "u", "input_type": "query"})
    assert keyed == {"dimensions": 4, "input_type": "query"}
    assert wire == {"encoding_format": "float", "user": "u"}
    assert embedding_params(None, None, {})[1] == {"encoding_format": "base64"}
    with pytest.raises(InvalidRequestError, match="dimensions"):
        embedding_params(0, None, {})
    assert embedding_params(MAX_DIMENSIONS, None, {})[0] == {"dimensions": MAX_DIMENSIONS}


@given(st.integers(MAX_DIMENSIONS + 1), st.booleans())
def test_dimensions_a_stored_vector_cannot_hold_are_refused_naming_them(
    dimensions: int, through_extra_body: bool
) -> None:
    # Beyond 64 bits, orjson raised a bare TypeError when the request was written.
    with pytest.raises(InvalidRequestError) as caught:
        if through_extra_body:
            embedding_params(None, None, {"dimensions": dimensions})
        else:
            embedding_params(dimensions, None, {})
    assert caught.value.field == "dimensions"
    with pytest.raises(InvalidRequestError, match="encoding_format"):
        embedding_params(None, "hex", {})


@given(
    st.text(max_size=20),
    st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=10),
    st.dictionaries(
        st.sampled_from(["dimensions", "input_type", "a"]), st.integers(-(2**31), 2**31), max_size=3
    ),
    st.text(max_size=5),
    st.text(max_size=5),
)
def test_keys_hashed_from_a_shared_prefix_are_the_keys_of_the_whole_canonical_form(
    model: str, inputs: list[str], params: dict[str, int], namespace: str, scope: str
) -> None:
    keys = request_keys(
        item_prefix(model, params),
        [text.encode() for text in inputs],
        namespace=namespace,
        scope=scope,
        credential="c",
    )
    whole = [
        request_key(
            item_canonical(model, text, params), namespace=namespace, scope=scope, credential="c"
        )
        for text in inputs
    ]
    assert keys == whole
    assert len(set(keys)) == len(set(inputs))


async def test_a_vector_written_by_a_clock_ahead_is_served_but_back_filled_nowhere() -> None:
    # Regression: vectors kept no time of writing; a writer's clock an hour ahead made
    # one back-filled into tier 0 until its (writer's) expiry, past the shared copy's.
    clock = FakeClock()
    below, top = MemoryCache(clock=clock), MemoryCache(clock=clock)
    ahead = VectorCodec(clock=lambda: clock() + 3600.0)
    data = ahead.encode("k", priced([1.0]), clock() + 3600.0 + 2.0)
    await below.set("k", data, 2.0)  # the shared tier keeps it for its TTL
    reader = TieredCache(top, below, clock=clock)
    found = await reader.get_value("k", VectorCodec(clock=clock).decode)
    assert found is not None and found[1] == 1  # served from below
    assert top.get_now("k") is None  # and kept nowhere above
    in_step = VectorCodec(clock=clock)
    await below.set("j", in_step.encode("j", priced([1.0]), clock() + 2.0), 2.0)
    assert await reader.get_value("j", in_step.decode) is not None
    assert top.get_now("j") is not None  # back-filled for what is left

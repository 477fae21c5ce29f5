"""Embedding vectors as bytes, and the pure steps of a batched embedding call.

Vectors travel and rest as packed little-endian float32, the layout of OpenAI's
``encoding_format: "base64"``: an upstream's base64 bytes are stored as they come, a list
of floats is packed once, and every caller (miss, hit or coalesced) gets the same floats,
rounded to float32. Nothing here does I/O.
"""

from __future__ import annotations

import array
import base64
import binascii
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from limpet.cache.sealing import Seal
from limpet.errors import CacheCorruptError, InvalidRequestError

#: One input of ``embed()``: a text, or a token array (token ids).
EmbedInput = str | list[int]

__all__ = [
    "DEFAULT_MAX_INPUTS",
    "MAX_DIMENSIONS",
    "MAX_TOKEN_ID",
    "VECTOR_FORMAT",
    "EmbedInput",
    "Vector",
    "VectorCodec",
    "cost_shares",
    "dimensions_sent",
    "embedding_params",
    "encoded_inputs",
    "estimate_tokens",
    "item_canonical",
    "item_prefix",
    "merge_by_index",
    "pack_floats",
    "plan_batches",
    "unpack_floats",
    "validate_inputs",
    "vector_bytes",
]

#: The layout version of a stored vector; another version decodes as corrupt (a miss).
#: 2: the envelope's CRC-32 of the rest. 3: when it was written. 4: what it cost.
VECTOR_FORMAT = 4

# (After the envelope's checksum, ``limpet.cache.sealing``:) created_at and expires_at
# (unix seconds, the writer's clock), what the vector cost (dollars; NaN: unknown), the
# key's length and the vector's length in floats.
_META = struct.Struct("<dddHI")
_FLOAT32 = 4
_BIG_ENDIAN = sys.byteorder == "big"


class Vector(NamedTuple):
    """One input's vector, and what it cost when it was fetched upstream: what a call it
    serves from the cache, or coalesced onto the request that fetched it, saved."""

    #: The vector as packed little-endian float32.
    packed: bytes
    #: Its share of its request's dollars (``cost_shares``); None when unknown.
    cost_usd: float | None


def cost_shares(tokens: Sequence[int], cost: float | None) -> list[float | None]:
    """Each input's share of ``cost``, the dollars of the one request that sent them all,
    by its share of ``tokens`` (each input's, ``estimate_tokens``): the shares add up to
    ``cost``. An embeddings answer's usage counts the request's tokens, never each
    input's, so a text's share is of its estimate (a token array's of its exact count).
    None each when ``cost`` is unknown (or not finite): never a share of $0 claimed.

    Example:
        >>> cost_shares([1, 3], 4e-6)
        [1e-06, 3e-06]
        >>> cost_shares([1, 3], None)
        [None, None]
    """
    total = sum(tokens)
    if cost is None or not math.isfinite(cost):
        return [None] * len(tokens)
    if not total:  # no estimate to weigh by: alike
        return [cost / len(tokens)] * len(tokens)
    return [cost * size / total for size in tokens]


def pack_floats(values: Sequence[float]) -> bytes:
    """``values`` as packed little-endian float32 (the wire's base64 layout).

    Raises:
        ValueError: a value that is not a finite number.
    """
    try:
        packed = array.array("f", values)
    except OverflowError as exc:
        raise ValueError(f"a vector component is out of range: {exc}") from None
    _check_finite(packed)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _check_finite(values: Iterable[float]) -> None:
    """Refuse NaN and infinities: the sum of float32 values cannot overflow a float64, so
    it is finite exactly when every value is (one pass at C speed)."""
    if not math.isfinite(sum(values)):
        raise ValueError("a vector component is not a finite number")


def unpack_floats(data: bytes | memoryview) -> list[float]:
    """The floats packed in ``data`` (little-endian float32)."""
    if not _BIG_ENDIAN:
        floats: list[float] = memoryview(data).cast("f").tolist()  # type: ignore[assignment]
        return floats
    unpacked = array.array("f")
    unpacked.frombytes(data)
    unpacked.byteswap()
    return unpacked.tolist()


def vector_bytes(embedding: object) -> bytes:
    """The packed float32 of one upstream ``embedding``: a base64 string (decoded as is)
    or a list of numbers (packed).

    Raises:
        ValueError: neither, empty, not a whole number of float32, or a component that is
            not a finite number (NaN or infinite, in either form).
    """
    if isinstance(embedding, str):
        try:
            data = base64.b64decode(embedding, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"embedding is not base64: {exc}") from None
    elif isinstance(embedding, list) and all(type(v) is float or type(v) is int for v in embedding):
        data = pack_floats(embedding)
    else:
        raise ValueError("embedding is neither base64 nor a list of numbers")
    if not data or len(data) % _FLOAT32:
        raise ValueError(f"embedding of {len(data)} bytes is not a whole float32 vector")
    if isinstance(embedding, str):  # packed as sent: checked in place, no list built
        _check_finite(unpack_floats(data) if _BIG_ENDIAN else memoryview(data).cast("f"))
    return data


def merge_by_index(data: object, count: int, dimensions: object = None) -> list[bytes]:
    """The vectors of an upstream ``data`` list placed by each item's ``index``, which must
    cover ``0 .. count - 1`` exactly once (never trusting the list's order), all of one
    length: ``dimensions`` floats when it is an int (the request's ``dimensions``).

    Raises:
        ValueError: not a list, an index missing, repeated, out of range or not an int,
            an embedding that does not decode, or vectors of another length.
    """
    if not isinstance(data, list):
        raise ValueError("response has no data list")
    placed: list[bytes | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count:
            raise ValueError(f"response item has index {index!r}, expected 0..{count - 1}")
        if placed[index] is not None:
            raise ValueError(f"response has index {index} twice")
        placed[index] = vector_bytes(item.get("embedding"))
    missing = [i for i, vector in enumerate(placed) if vector is None]
    if missing:
        raise ValueError(f"response lacks {len(missing)} of {count} indices, first {missing[0]}")
    vectors = [vector for vector in placed if vector is not None]
    _check_lengths(vectors, dimensions)
    return vectors


def _check_lengths(vectors: list[bytes], dimensions: object) -> None:
    """Every vector of one answer has one length, the one asked for if any: a gateway
    that ignores ``dimensions`` or cuts a vector short must not be cached under the key."""
    if type(dimensions) is int:
        size, source = dimensions * _FLOAT32, f"dimensions={dimensions}"
    else:
        size, source = len(vectors[0]) if vectors else 0, "as vector 0"
    for index, vector in enumerate(vectors):
        if len(vector) != size:
            components = len(vector) // _FLOAT32
            raise ValueError(
                f"vector {index} has {components} components, expected {size // _FLOAT32} "
                f"({source})"
            )


def dimensions_sent(keyed: Mapping[str, Any], extra_body: Mapping[str, Any] | None) -> int | None:
    """The vectors' length a request asks an endpoint for, as the wire says it (the
    request's fields over the endpoint's ``extra_body``): the request's ``dimensions``
    when it names one (None: it clears the endpoint's, and asks for no length), else the
    one the endpoint's ``extra_body`` sends with every request, when it is an int."""
    sent = keyed["dimensions"] if "dimensions" in keyed else (extra_body or {}).get("dimensions")
    return sent if type(sent) is int else None


def plan_batches(
    tokens: Sequence[int], max_items: int, max_tokens: int | None = None
) -> list[range]:
    """Consecutive slices of items, each at most ``max_items`` long and, with
    ``max_tokens``, at most that many tokens (an item over the budget goes alone)."""
    batches: list[range] = []
    start, total = 0, 0
    for index, size in enumerate(tokens):
        full = index - start >= max_items
        over = max_tokens is not None and index > start and total + size > max_tokens
        if full or over:
            batches.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(tokens):
        batches.append(range(start, len(tokens)))
    return batches


def estimate_tokens(text: EmbedInput) -> int:
    """A cheap, upper-leaning estimate of an input's tokens: a text's about 4 bytes of
    UTF-8 a token, but never fewer than its bytes beyond one a character (CJK text, three
    bytes a character, runs over one token a character: two a character estimated); a
    token array's count."""
    if type(text) is str:
        size = len(text.encode())
        return max(size // 4, size - len(text)) + 1
    return len(text)


def item_prefix(model: str, params: Mapping[str, Any]) -> bytes:
    """What every input of one call shares in its canonical form: a kind tag (so it can
    never equal a chat request's canonical JSON, which starts with ``{``), then the model
    and the output-changing fields as canonical JSON, then a NUL. The input follows
    (``item_canonical``): JSON escapes every control character, so the NUL ends the shared
    part unambiguously."""
    fields = orjson.dumps({**params, "model": model}, option=orjson.OPT_SORT_KEYS)
    return b"limpet/embedding\x00" + fields + b"\x00"


def encoded_inputs(texts: Sequence[EmbedInput]) -> list[bytes]:
    """What each input's key hashes after ``item_prefix``: a text's UTF-8 bytes; a token
    array's ids as little-endian uint32 after a 0xFF byte, which no UTF-8 text holds, so
    a token array and a text never share a key.

    Raises:
        InvalidRequestError: a text that is no valid UTF-8 (a lone surrogate), by index.
    """
    try:
        return [
            text.encode() if type(text) is str else _TOKENS + struct.pack(f"<{len(text)}I", *text)
            for text in texts
        ]
    except UnicodeEncodeError:
        for index, text in enumerate(texts):
            try:
                if type(text) is str:
                    text.encode()
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    f"input[{index}]", "valid UTF-8 text (no lone surrogate)", text
                ) from None
        raise


def item_canonical(model: str, text: EmbedInput, params: Mapping[str, Any]) -> bytes:
    """What identifies one input's vector: ``item_prefix`` then the input
    (``encoded_inputs``)."""
    return item_prefix(model, params) + encoded_inputs([text])[0]


_TOKENS = b"\xff"  # never in UTF-8: a token array's encoding starts with it
#: The largest token id an input may hold (ids are keyed as uint32).
MAX_TOKEN_ID = 2**32 - 1
#: The most ``dimensions`` a call may ask for: a stored vector's length is a uint32
#: (``_META``), and JSON writes no wider int than 64 bits anyway.
MAX_DIMENSIONS = 2**32 - 1
_DIMENSIONS_TEXT = f"None or an int from 1 to {MAX_DIMENSIONS}"


#: Inputs one ``embed()`` call may carry; more is an ``InvalidRequestError``.
DEFAULT_MAX_INPUTS = 100_000

# Fields that say how vectors travel, never what they are: not part of an input's key.
_WIRE_FIELDS = frozenset({"encoding_format", "user", "stream"})


def validate_inputs(input: object, max_inputs: int) -> list[EmbedInput]:
    """``input`` as a list of inputs, as OpenAI takes them: a text, a list of texts, a
    token array (a list of token ids) or a list of token arrays (each a list of its
    own), every one non-empty, all of one kind.

    Raises:
        InvalidRequestError: none of those, empty, an empty item or one of the other kind
            (named by its index), a token id not an int from 0 to ``MAX_TOKEN_ID``, or
            more than ``max_inputs`` items.
    """
    if isinstance(input, str):
        if not input:
            raise InvalidRequestError("input", "a non-empty str", input)
        return [_text(input)]
    if not isinstance(input, list | tuple):
        raise InvalidRequestError("input", _INPUT_TEXT, input)
    if not input:
        raise InvalidRequestError("input", "at least one input", input)
    if type(input[0]) is int:  # one token array
        return [_token_array("input", input, False)]
    if len(input) > max_inputs:
        raise InvalidRequestError(
            f"input[{max_inputs}]", f"at most {max_inputs} inputs per call", len(input)
        )
    if isinstance(input[0], str):
        texts = list(input)
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text:
                raise InvalidRequestError(f"input[{index}]", "a non-empty str, as input[0]", text)
            if type(text) is not str:
                texts[index] = _text(text)
        return texts
    if not isinstance(input[0], list | tuple):
        raise InvalidRequestError("input[0]", "a str, a token id or a list of token ids", input[0])
    return [
        _token_array(f"input[{index}]", tokens, index > 0) for index, tokens in enumerate(input)
    ]


_INPUT_TEXT = "a str, a list of str, a list of token ids (ints) or a list of such lists"


def _text(text: str) -> str:
    """The plain str of ``text``: a str subclass (a ``StrEnum`` member, numpy's ``str_``)
    is its text, as it is sent; the stages after validation know a text by its exact type
    (anything else is a token array)."""
    return text if type(text) is str else str.__str__(text)


def _token_array(where: str, tokens: object, after_first: bool) -> list[int]:
    """``tokens`` as a token array: a non-empty list of ids from 0 to ``MAX_TOKEN_ID``
    (``after_first``: of a list whose first item is one)."""
    if not isinstance(tokens, list | tuple) or not tokens:
        expected = "a non-empty list of token ids" + (", as input[0]" if after_first else "")
        raise InvalidRequestError(where, expected, tokens)
    for index, token in enumerate(tokens):
        if type(token) is not int or not 0 <= token <= MAX_TOKEN_ID:
            raise InvalidRequestError(
                f"{where}[{index}]", f"a token id: an int from 0 to {MAX_TOKEN_ID}", token
            )
    return list(tokens)


def embedding_params(
    dimensions: object, encoding_format: object, params: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that change a vector (in every input's key) and the wire-only ones.

    ``encoding_format`` is wire-only: vectors come back as floats whatever it is, and
    base64 (the default) is a third of the bytes of JSON floats.

    Raises:
        InvalidRequestError: ``dimensions`` not an int from 1 to ``MAX_DIMENSIONS``, or an unknown
            ``encoding_format``; a ``dimensions`` among ``params`` (``extra_body``'s)
            by the same rule, for it is keyed and sent as the argument is.
    """
    for given in (dimensions, params.get("dimensions")):
        if given is not None and (type(given) is not int or not 1 <= given <= MAX_DIMENSIONS):
            raise InvalidRequestError("dimensions", _DIMENSIONS_TEXT, given)
    if encoding_format not in (None, "float", "base64"):
        raise InvalidRequestError("encoding_format", "None, 'float' or 'base64'", encoding_format)
    keyed = {name: value for name, value in params.items() if name not in _WIRE_FIELDS}
    if dimensions is not None:
        keyed["dimensions"] = dimensions
    wire = {name: value for name, value in params.items() if name in _WIRE_FIELDS}
    wire.pop("stream", None)
    wire["encoding_format"] = encoding_format or "base64"
    return keyed, wire


class VectorCodec:
    """One stored vector as bytes, bound to its key, optionally signed: the rules of
    ``EntryCodec`` (``limpet.cache.base``) for a binary value.

    Layout: ``b"LV"``, format byte, signed flag, [32-byte HMAC-SHA256 over the rest],
    a CRC-32 of the rest, ``created_at``, ``expires_at``, what the vector cost (NaN:
    unknown), the key's and the vector's lengths, the key, then the packed float32. A
    vector read under another key, unsigned when a key is set, badly signed, truncated,
    padded or changed (its checksum) is corrupt: unsigned, a flipped bit or another
    vector's bytes written over it would otherwise decode as another vector.
    """

    __slots__ = ("_clock", "_seal")

    def __init__(
        self, hmac_key: bytes | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        # "LV", not the completions' "LP": a vector entry never decodes as a completion,
        # nor the reverse, even were it found under the other's key.
        self._seal = Seal(b"LV", VECTOR_FORMAT, hmac_key, "vector")
        self._clock = clock

    def encode(self, key: str, vector: Vector, expires_at: float) -> bytes:
        """The bytes of ``vector``, with what it cost, to be stored under ``key`` only."""
        bound = key.encode()
        packed, cost = vector
        floats = len(packed) // _FLOAT32
        meta = _META.pack(
            self._clock(), expires_at, math.nan if cost is None else cost, len(bound), floats
        )
        return self._seal.wrap(meta + bound + packed)

    def decode(self, key: str, data: bytes) -> tuple[Vector, float | None]:
        """The vector in ``data`` read under ``key``, and when it expires: None
        when it was written "later" than now (by a clock running ahead: its age, hence
        what is left of its TTL, is unknown here), as ``TieredCache`` reads an entry's.

        Raises:
            CacheCorruptError: as ``EntryCodec.decode``.
        """
        start = self._seal.open(data)
        try:
            created, expires, cost, bound, floats = _META.unpack_from(data, start)
        except struct.error as exc:
            raise CacheCorruptError(f"vector header is malformed: {exc}") from exc
        key_at = start + _META.size
        vector_at = key_at + bound
        if len(data) != vector_at + floats * _FLOAT32 or not floats:
            raise CacheCorruptError("vector length does not match its header")
        bound_key = key.encode()
        if len(bound_key) != bound or not data.startswith(bound_key, key_at):  # in place
            raise CacheCorruptError("vector was stored under another key")
        if not math.isfinite(expires) or not math.isfinite(created) or math.isinf(cost):
            raise CacheCorruptError("vector times or cost are not finite")
        vector = Vector(data[vector_at:], None if math.isnan(cost) else cost)
        return vector, None if created > self._clock() else expires

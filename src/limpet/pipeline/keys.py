"""Cache keys: canonical request bytes and a cryptographic hash over them.

A key must be equal for equal requests, whatever their dict key order, and differ when
anything that can change the output differs. A collision would serve someone another
request's answer, so the hash is SHA-256 (cryptographic; with the SHA extensions most
x86 and ARM CPUs have, OpenSSL's is also faster than blake2b), never a fast non-cryptographic
one.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from limpet.cache.base import ENTRY_FORMAT
from limpet.errors import InvalidRequestError
from limpet.pipeline.validation import json_problem
from limpet.pipeline.vectors import VECTOR_FORMAT

__all__ = [
    "KEY_SCHEMA_VERSION",
    "LARGE_REQUEST_BYTES",
    "ORDERED_FIELDS",
    "TRANSPORT_ONLY_FIELDS",
    "KeyExplanation",
    "canonical_pieces",
    "canonical_request",
    "explain_key",
    "key_header",
    "request_key",
    "request_key_async",
    "request_keys",
]

#: Bumped whenever the canonical form changes, so old entries can never be misread.
#: 2: the credential scope. 3: the endpoints' URLs and headers; the stored formats; the
#: order within ``ORDERED_FIELDS``.
KEY_SCHEMA_VERSION = 3

#: Fields that change how a response is delivered or attributed, never what it says.
TRANSPORT_ONLY_FIELDS = frozenset(
    {"stream", "stream_options", "user", "session_id", "prompt_cache_key", "usage"}
)
#: Fields keyed in the order they are written, their keys unsorted: the schemas in them
#: are rendered to the model in that order, and a structured answer's fields are
#: generated in it (``{"reasoning", "answer"}`` asks for another answer than
#: ``{"answer", "reasoning"}``). OpenAI's, and those self-hosted OpenAI-compatible
#: servers take a schema in: vLLM's ``guided_json`` and ``structured_outputs``,
#: llama.cpp's ``json_schema``, TGI's ``grammar``.
ORDERED_FIELDS = frozenset(
    {
        "response_format",
        "tools",
        "functions",
        "guided_json",
        "structured_outputs",
        "json_schema",
        "grammar",
    }
)
_RESHAPED = TRANSPORT_ONLY_FIELDS | ORDERED_FIELDS

# The formats of what is stored under a key are part of it: a build that writes another
# format (a rolling upgrade) keeps entries of its own, where it would otherwise take the
# other build's for corrupt and delete them, each build the other's, call after call.
_KEY_PREFIX = (
    f"limpet/key/v{KEY_SCHEMA_VERSION}/entry{ENTRY_FORMAT}/vector{VECTOR_FORMAT}\x00".encode()
)
# Integral floats below this magnitude are keyed as ints (2**53: every one is exact).
_EXACT = 2.0**53
_SORT = orjson.OPT_SORT_KEYS


def canonical_request(body: Mapping[str, Any]) -> bytes:
    """The request as canonical JSON: keys sorted at every depth but within the fields
    whose order reaches the model (``ORDERED_FIELDS``), transport-only fields out.

    Top-level integral floats are written as ints, so ``temperature=0`` and
    ``temperature=0.0`` are one request.

    Raises:
        InvalidRequestError: a value that is not JSON (a set, an object, a non-str dict key).
    """
    kept: Mapping[str, Any] | None = body
    for name, value in body.items():
        # Copy only when something must be dropped or reshaped: usually nothing must.
        if name in _RESHAPED or type(value) is float:
            kept = None
            break
    try:
        return orjson.dumps(_kept(body) if kept is None else kept, option=_SORT)
    except orjson.JSONEncodeError as exc:
        raise unserialisable(body, exc) from exc


def _kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``body`` that enter the key: top-level integral floats as ints
    (those an int64 holds exactly: ``1e20`` stays a float, as orjson writes no wider int),
    ordered fields as written, in their order.

    Raises:
        orjson.JSONEncodeError: an ordered field is not JSON.
    """
    return {
        name: int(value)
        if type(value) is float and value.is_integer() and -_EXACT < value < _EXACT
        else orjson.Fragment(orjson.dumps(value))
        if name in ORDERED_FIELDS
        else value
        for name, value in body.items()
        if name not in TRANSPORT_ONLY_FIELDS
    }


def unserialisable(body: Mapping[str, Any], exc: Exception) -> InvalidRequestError:
    """The error for a body orjson could not write (``exc``), naming the offending field
    when validation's full check can tell which (an int wider than 64 bits, a str that is
    not valid UTF-8)."""
    return json_problem(body) or InvalidRequestError(
        "request body", "JSON-serialisable values", str(exc)
    )


def request_key(
    canonical: bytes, *, namespace: str = "", scope: str = "", credential: str = ""
) -> str:
    """The cache key: 64 hex digits of SHA-256 over (schema version, namespace, credential
    scope, generations, body).

    Args:
        canonical: ``canonical_request(body)``.
        namespace: isolates tenants or key-schema versions of one application.
        scope: invalidation generations; bumping one changes every key under it.
        credential: the Client's credential scope (``limpet.pipeline.credentials``), or "" when
            entries are shared across credentials (``cache_scope="namespace"``).
    """
    return hashlib.sha256(key_header(namespace, scope, credential) + canonical).hexdigest()


def request_keys(
    prefix: bytes,
    suffixes: Iterable[bytes],
    *,
    namespace: str = "",
    scope: str = "",
    credential: str = "",
) -> list[str]:
    """``request_key(prefix + suffix, ...)`` of each suffix, hashing what they share once
    (``embed()``'s inputs share the model and parameters, and differ by their text)."""
    shared = hashlib.sha256(key_header(namespace, scope, credential) + prefix)
    keys = []
    for suffix in suffixes:
        one = shared.copy()
        one.update(suffix)
        keys.append(one.hexdigest())
    return keys


@functools.lru_cache(maxsize=1024)
def key_header(namespace: str, scope: str, credential: str) -> bytes:
    """What every key hashes ahead of the canonical request: the schema version, the
    namespace, the credential scope and the generations, each length-prefixed."""
    # Length prefixes keep ("ab", "") and ("a", "b") apart. Few distinct triples exist at
    # a time (a namespace, a generation per model), so they are built once, not per call.
    ns, sc, cr = namespace.encode(), scope.encode(), credential.encode()
    return b"%s%d:%s%d:%s%d:%s" % (_KEY_PREFIX, len(ns), ns, len(cr), cr, len(sc), sc)


@dataclass(frozen=True, slots=True)
class KeyExplanation:
    """What went into a cache key, for debugging surprising hits and misses.

    Attributes:
        key: the key itself.
        schema_version: ``KEY_SCHEMA_VERSION``.
        namespace: the namespace hashed in.
        scope: the invalidation generations hashed in.
        credential: the credential scope hashed in ("" when shared across credentials);
            a Client's keys append its endpoints' scope ("+ep:", ``endpoints_scope``) and
            a call's own keyed headers' ("+hd:", ``headers_scope``).
        fields: the request fields that count, sorted.
        ignored: the transport-only fields that were present and left out, sorted.
        canonical: the canonical JSON that was hashed.
    """

    key: str
    schema_version: int
    namespace: str
    scope: str
    fields: tuple[str, ...]
    ignored: tuple[str, ...]
    canonical: str
    credential: str = ""


def explain_key(
    body: Mapping[str, Any], *, namespace: str = "", scope: str = "", credential: str = ""
) -> KeyExplanation:
    """Show what goes into the key of a request.

    Example:
        >>> e = explain_key({"model": "m", "messages": [], "temperature": 0, "user": "u1"})
        >>> e.fields, e.ignored
        (('messages', 'model', 'temperature'), ('user',))
    """
    canonical = canonical_request(body)
    return KeyExplanation(
        key=request_key(canonical, namespace=namespace, scope=scope, credential=credential),
        schema_version=KEY_SCHEMA_VERSION,
        namespace=namespace,
        scope=scope,
        fields=tuple(sorted(name for name in body if name not in TRANSPORT_ONLY_FIELDS)),
        ignored=tuple(sorted(name for name in body if name in TRANSPORT_ONLY_FIELDS)),
        canonical=canonical.decode(),
        credential=credential,
    )


# --- Large requests: keyed without blocking the event loop ---------------------------
# ``canonical_request`` is one ``orjson.dumps`` call: C code that holds the GIL from start
# to end, so a 10 MB request (or 10,000 messages) blocks the loop for tens of
# milliseconds, and a worker thread would not help (it would hold the same GIL). Here a
# large request is written piece by piece instead, each piece a short ``orjson.dumps`` of
# a small subtree or a slice of a long string (JSON escapes a string character by
# character, so its slices' escapes join into the whole one's), and hashed as it goes,
# yielding to the loop between pieces. The bytes hashed are exactly
# ``canonical_request``'s, so the key is the one ``request_key`` gives.

#: A request estimated above this many bytes of JSON is keyed piece by piece.
LARGE_REQUEST_BYTES = 256 * 1024
#: Messages above which a request is keyed piece by piece, whatever their size.
LARGE_MESSAGE_COUNT = 512
#: Largest subtree (estimated bytes) or string slice written by one ``orjson.dumps``.
PIECE_BYTES = 16 * 1024
#: Bytes hashed between two yields to the event loop.
YIELD_EVERY = 32 * 1024


async def request_key_async(
    body: Mapping[str, Any], *, namespace: str = "", scope: str = "", credential: str = ""
) -> str:
    """``request_key(canonical_request(body), ...)``, yielding to the event loop while
    it hashes a large request, so no caller waits long for a large one to be keyed.

    Raises:
        InvalidRequestError: a value that is not JSON.
    """
    if not is_large(body):
        return request_key(
            canonical_request(body), namespace=namespace, scope=scope, credential=credential
        )
    digest = hashlib.sha256(key_header(namespace, scope, credential))
    since = 0
    for piece in canonical_pieces(body):
        digest.update(piece)
        since += len(piece)
        if since >= YIELD_EVERY:
            since = 0
            await asyncio.sleep(0)
    return digest.hexdigest()


def looks_large(body: Mapping[str, Any], text_chars: int = -1) -> bool:
    """Whether ``body`` may be large, cheaply enough for every call, hits included: the
    messages are counted and their text contents' lengths summed; any other content
    (parts, tool calls) takes ``is_large``'s fuller estimate.

    Args:
        text_chars: that sum when the caller has it already (``validate_request``'s),
            else -1.
    """
    messages = body.get("messages")
    if type(messages) is not list:
        return is_large(body)
    if len(messages) > LARGE_MESSAGE_COUNT:
        return True
    if text_chars >= 0:
        return text_chars >= LARGE_REQUEST_BYTES
    size = 0
    for message in messages:
        content = message.get("content") if type(message) is dict else None
        if type(content) is not str:
            return is_large(body)
        size += len(content)
    return size >= LARGE_REQUEST_BYTES


def is_large(body: Mapping[str, Any]) -> bool:
    """Whether ``body`` is worth keying piece by piece (a cheap, bounded estimate)."""
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > LARGE_MESSAGE_COUNT:
        return True
    return _rough_size(body, LARGE_REQUEST_BYTES) >= LARGE_REQUEST_BYTES


def canonical_pieces(body: Mapping[str, Any], piece: int = PIECE_BYTES) -> Iterator[bytes]:
    """``canonical_request(body)`` in pieces: ``b"".join(...)`` equals it.

    Raises:
        InvalidRequestError: a value that is not JSON.
    """
    try:
        yield from _pieces(_kept(body), piece)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise unserialisable(body, exc) from exc


def _pieces(value: Any, piece: int) -> Iterator[bytes]:
    kind = type(value)
    if kind is str and len(value) > piece:
        yield b'"'
        for at in range(0, len(value), piece):
            yield orjson.dumps(value[at : at + piece])[1:-1]
        yield b'"'
    elif (kind is dict or kind is list) and _rough_size(value, piece) >= piece:
        yield from _container_pieces(value, piece)
    else:
        yield orjson.dumps(value, option=_SORT)


def _container_pieces(value: dict[Any, Any] | list[Any], piece: int) -> Iterator[bytes]:
    if type(value) is list:
        yield b"["
        first = True
        for group in _groups(value, piece):
            if not first:
                yield b","
            first = False
            if type(group) is list:  # small neighbours, written together
                yield orjson.dumps(group, option=_SORT)[1:-1]
            else:
                yield from _pieces(group[0], piece)
        yield b"]"
        return
    assert isinstance(value, dict)
    # orjson's own order (and its errors for keys that are not strings).
    order = orjson.loads(orjson.dumps(dict.fromkeys(value, 0), option=_SORT))
    yield b"{"
    for index, name in enumerate(order):
        yield (b",%s:" if index else b"%s:") % orjson.dumps(name)
        yield from _pieces(value[name], piece)
    yield b"}"


def _groups(items: list[Any], piece: int) -> Iterator[list[Any] | tuple[Any]]:
    """``items`` in runs of small neighbours (a list, about ``piece`` bytes at most) and
    large items alone (a 1-tuple), in order."""
    run: list[Any] = []
    size = 0
    for item in items:
        rough = _rough_size(item, piece)
        if rough >= piece:
            if run:
                yield run
                run, size = [], 0
            yield (item,)
            continue
        if size + rough > piece and run:
            yield run
            run, size = [], 0
        run.append(item)
        size += rough
    if run:
        yield run


def _rough_size(value: Any, limit: int) -> int:
    """About how many bytes of JSON ``value`` makes; stops counting at ``limit``."""
    total = 0
    stack = [value]
    while stack and total < limit:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += len(item) + 2
        elif kind is dict:
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total

"""Keys of large requests without blocking the event loop.

``canonical_request`` is one ``orjson.dumps`` call: C code that holds the GIL from start
to end, so a 10 MB request (or 10,000 messages) blocks the loop for tens of
milliseconds, and a worker thread would not help (it would hold the same GIL). Here a
large request is written piece by piece instead, each piece a short ``orjson.dumps`` of
a small subtree or a slice of a long string (JSON escapes a string character by
character, so its slices' escapes join into the whole one's), and hashed as it goes,
yielding to the loop between pieces. The bytes hashed are exactly
``canonical_request``'s, so the key is the one ``request_key`` gives.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from limpet.errors import InvalidRequestError
from limpet.pipeline.keys import (
    TRANSPORT_ONLY_FIELDS,
    canonical_request,
    key_header,
    request_key,
)

__all__ = ["LARGE_REQUEST_BYTES", "canonical_pieces", "request_key_async"]

#: A request estimated above this many bytes of JSON is keyed piece by piece.
LARGE_REQUEST_BYTES = 256 * 1024
#: Messages above which a request is keyed piece by piece, whatever their size.
LARGE_MESSAGE_COUNT = 512
#: Largest subtree (estimated bytes) or string slice written by one ``orjson.dumps``.
PIECE_BYTES = 64 * 1024
#: Bytes hashed between two yields to the event loop.
YIELD_EVERY = 256 * 1024

_SORT = orjson.OPT_SORT_KEYS


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
    kept = {
        name: int(value) if type(value) is float and value.is_integer() else value
        for name, value in body.items()
        if name not in TRANSPORT_ONLY_FIELDS
    }
    try:
        yield from _pieces(kept, piece)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidRequestError("request body", "JSON-serialisable values", str(exc)) from exc


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
        for index, item in enumerate(value):
            if index:
                yield b","
            yield from _pieces(item, piece)
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

"""A request body of limpet's own, taken when a call leaves the hit path: what is keyed
is what is sent.

A caller's ``messages`` are its own objects, and a caller may change them while its call
runs (reusing one list or dict for the next call, appending to a conversation another
task is sending). The key is computed from the body at one moment and the body is
written to the wire at another, several awaits later: without a copy of its own, limpet
would store the answer to what was sent under the key of what was asked, and serve it to
the next caller who asks that. The copy is taken in the same step the key is computed
in (or before it, when keying awaits), so nothing a caller does afterwards reaches
either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from limpet.pipeline.keys import unserialisable

__all__ = ["COPY_BATCH", "frozen_body", "owned_body", "owned_large_body", "thawed_body"]

#: Messages copied between two yields to the event loop, for a large request.
COPY_BATCH = 256


def owned_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` sharing nothing mutable with it, as the JSON it will be sent as
    (str subclasses as str, tuples as lists).

    Raises:
        InvalidRequestError: a value that is not JSON, naming its field.
    """
    return thawed_body(frozen_body(body))


def frozen_body(body: Mapping[str, Any]) -> bytes:
    """``body`` as the JSON it will be sent as: ``owned_body``'s copy taken now, whose
    parse (``thawed_body``) waits until the body is needed (a call that may yet be
    answered by a shared tier pays for no parse then).

    Raises:
        InvalidRequestError: a value that is not JSON, naming its field.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise unserialisable(body, exc) from exc


def thawed_body(frozen: bytes) -> dict[str, Any]:
    """The body ``frozen_body`` froze, as a dict of limpet's own."""
    copy: dict[str, Any] = orjson.loads(frozen)
    return copy


async def owned_large_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """``owned_body`` for a large request, yielding to the event loop every
    ``COPY_BATCH`` messages: its containers are copied and its str values, immutable,
    shared (a message of megabytes costs what a short one does). A message the caller
    changes before its turn is copied as changed; the key is computed from this copy."""
    messages = body.get("messages")
    if type(messages) is not list:
        return {name: _copied(value) for name, value in body.items()}
    copy = {name: _copied(value) for name, value in body.items() if name != "messages"}
    pending = list(messages)  # one step: later appends to the caller's list are not sent
    owned: list[Any] = []
    for start in range(0, len(pending), COPY_BATCH):
        if start:
            await asyncio.sleep(0)
        owned.extend(_copied(message) for message in pending[start : start + COPY_BATCH])
    copy["messages"] = owned
    return copy


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _copied(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_copied(item) for item in value]
    return value

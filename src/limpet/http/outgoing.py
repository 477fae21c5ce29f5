"""What is sent upstream: the JSON payload, one call's headers on the endpoint, a large
body as a file. Pure."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import orjson

from limpet.config import Endpoint

# aiohttp's own limit for bytes it sends in one write (larger: it warns, and blocks).
LARGE_PAYLOAD_BYTES = 1024 * 1024


def sendable(payload: bytes) -> bytes | io.BytesIO:
    """What aiohttp is given to send: a large body as a file it writes in pieces (bytes
    over its limit would be written in one go, blocking the loop, and warned about)."""
    return io.BytesIO(payload) if len(payload) > LARGE_PAYLOAD_BYTES else payload


def body_sent(endpoint: Endpoint, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """What is sent: ``body`` over the endpoint's ``extra_body`` (the body's fields win),
    or ``body`` itself when the endpoint adds nothing."""
    if not endpoint.extra_body:
        return body
    return {**endpoint.extra_body, **body}


def payload_of(endpoint: Endpoint, body: Mapping[str, Any]) -> bytes:
    """The JSON sent: ``body_sent(endpoint, body)``."""
    sent = body_sent(endpoint, body)
    return orjson.dumps(sent if type(sent) is dict else dict(sent))


def as_sent(endpoint: Endpoint, headers: Mapping[str, str] | None) -> Endpoint:
    """``endpoint`` with one call's own headers on top of its own (they win), so they
    are sent, and scrubbed from every error, exactly like the endpoint's."""
    return endpoint.with_headers(headers) if headers else endpoint

"""How ``CachedContents`` talks HTTP: the one-method ``HTTPCall`` protocol, and
``AiohttpCall``, which adapts a borrowed ``aiohttp.ClientSession`` through limpet's one
error boundary (``limpet.errors.upstream_errors``) and one scrubber (``scrub``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from limpet.endpoint import header_secrets
from limpet.errors import excerpt, scrub, upstream_errors

__all__ = ["AiohttpCall", "HTTPCall", "HTTPReply"]


@dataclass(frozen=True, slots=True)
class HTTPReply:
    """What an ``HTTPCall`` returns.

    Attributes:
        status: the HTTP status.
        body: the parsed JSON body, or None when it was empty or not JSON.
        text: the first characters of the body as received, for error messages.
        request_id: the server's request id header, when it sent one.
    """

    status: int
    body: object
    text: str = ""
    request_id: str | None = None


class HTTPCall(Protocol):
    """Sends one HTTP request with an optional JSON body; raises only ``limpet.errors``
    (``APIConnectionError``, ``APITimeoutError``) when no answer arrives. What it returns
    is already scrubbed of its credentials: errors are built from it as it is."""

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HTTPReply: ...


class AiohttpCall:
    """An ``HTTPCall`` over an ``aiohttp.ClientSession`` it borrows and never closes.

    Its credentials (the values of ``headers``) are scrubbed from every reply (body, text,
    request id) and error, whatever the server echoes back.

    Args:
        session: the session to send through.
        headers: sent with every request: ``{"Authorization": "Bearer ..."}`` for a
            gateway, ``{"x-goog-api-key": ...}`` for Google's own API. Never shown.
        name: names the service in error messages.
    """

    __slots__ = ("_headers", "_name", "_secrets", "_session")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        headers: Mapping[str, str] | None = None,
        name: str = "gemini",
    ) -> None:
        self._session = session
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._secrets = header_secrets(headers or {})
        self._name = name

    def __repr__(self) -> str:
        return f"AiohttpCall(name={self._name!r})"

    async def __call__(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> HTTPReply:
        data = None if json is None else orjson.dumps(json)
        with upstream_errors(self._name, self._secrets):
            async with self._session.request(
                method,
                url,
                data=data,
                params=params,
                headers=self._headers,
                # Never followed: the key and the body would go wherever it points.
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                request_id = response.headers.get("x-request-id")
        try:
            # Parsed after scrubbing: a secret inside a JSON string leaves it valid JSON.
            body = orjson.loads(scrub(raw.decode(), self._secrets)) if raw else None
        except (orjson.JSONDecodeError, UnicodeDecodeError):
            body = None
        text = excerpt(raw, self._secrets)
        if request_id is not None:
            request_id = scrub(request_id, self._secrets)
        return HTTPReply(status, body, text, request_id)

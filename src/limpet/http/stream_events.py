"""The chunks of an upstream event stream, as they arrive: SSE decoded, ``[DONE]`` ending
it, failures mapped (an end before ``[DONE]`` is a connection error)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from limpet.config import Endpoint
from limpet.errors import APIConnectionError, upstream_errors
from limpet.http.responses import stream_chunk
from limpet.http.sse import SSEDecoder


async def stream_events(
    response: aiohttp.ClientResponse, endpoint: Endpoint
) -> AsyncGenerator[dict[str, Any], None]:
    """Each chunk of ``response``'s stream until ``[DONE]``."""
    decoder = SSEDecoder()
    with upstream_errors(endpoint.name, endpoint.secrets, stream=True):
        async for piece in response.content.iter_any():
            for data in decoder.feed(piece):
                if data == "[DONE]":
                    return
                yield stream_chunk(endpoint, data)
        for data in decoder.close():
            if data == "[DONE]":
                return
            yield stream_chunk(endpoint, data)
        raise APIConnectionError(
            f"stream from endpoint {endpoint.name!r} ended before [DONE]",
            endpoint=endpoint.name,
        )

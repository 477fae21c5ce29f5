"""The chunks of an upstream event stream, as they arrive: SSE decoded, ``[DONE]`` ending
it, failures mapped (an end before ``[DONE]``, even inside an event, is a connection error;
an event past the decoder's cap a malformed answer)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from limpet.config import Endpoint
from limpet.errors import APIConnectionError, upstream_errors
from limpet.http.responses import malformed_answer, stream_chunk
from limpet.http.sse import MAX_EVENT_BYTES, EventTooLargeError, SSEDecoder


async def stream_events(
    response: aiohttp.ClientResponse,
    endpoint: Endpoint,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> AsyncGenerator[dict[str, Any], None]:
    """Each chunk of ``response``'s stream until ``[DONE]``.

    Raises:
        APIConnectionError: the stream ended before ``[DONE]`` (an event it ended
            inside is discarded, never parsed).
        APIResponseError: a chunk is not a JSON object, or an event is over
            ``max_event_bytes``.
    """
    decoder = SSEDecoder(max_event_bytes=max_event_bytes)
    with upstream_errors(endpoint.name, endpoint.secrets, stream=True):
        async for piece in response.content.iter_any():
            for data in _decoded(decoder, piece, endpoint):
                if data == "[DONE]":
                    return
                yield stream_chunk(endpoint, data)
        events, unfinished = decoder.close()
        for data in events:
            if data == "[DONE]":
                return
            yield stream_chunk(endpoint, data)
        # An event the body ended inside may be cut anywhere, so it is no chunk: the stream
        # ended before [DONE], like a connection cut there. A [DONE] that lost its blank
        # line can be no part of anything longer: the answer is whole.
        if unfinished == "[DONE]":
            return
        raise APIConnectionError(
            f"stream from endpoint {endpoint.name!r} ended before [DONE]",
            endpoint=endpoint.name,
        )


def _decoded(decoder: SSEDecoder, piece: bytes, endpoint: Endpoint) -> list[str]:
    """The events ``piece`` completes; an event past the decoder's cap is a malformed
    answer, never a reason to hold more memory."""
    try:
        return decoder.feed(piece)
    except EventTooLargeError as exc:
        raise malformed_answer(endpoint, f"stream from endpoint {endpoint.name!r}: {exc}") from exc

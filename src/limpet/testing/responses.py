"""The aiohttp responses a ``FakeGateway`` sends: JSON bodies, errors, event streams, faults."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.faults import (
    DropConnectionFault,
    EarlyDoneFault,
    EchoAuthorizationFault,
    GenerationErrorFault,
    MalformedBodyFault,
    StatusFault,
    StreamErrorFault,
    WrongShapeFault,
)
from limpet.testing.wire import SSE_DONE, SSE_PROCESSING, Answer, error_body, sse_event

#: What a ``malformed()`` fault sends: the start of a completion, cut off.
MALFORMED_BODY = b'{"choices": ['
#: What a ``wrong_shape()`` fault sends: valid JSON, but not a chat completion.
WRONG_SHAPE_BODY = b'{"hello": "world"}'


@web.middleware
async def error_bodies(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own errors (no such route, wrong method) in OpenRouter's JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)


def json_response(
    status: int,
    body: Mapping[str, Any] | bytes,
    *,
    generation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON response with a fresh ``x-request-id``; ``body`` as bytes is sent as is."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    response = web.Response(status=status, body=payload, content_type="application/json")
    response.headers["x-request-id"] = _request_id()
    if generation_id is not None:
        response.headers["X-Generation-Id"] = generation_id
    response.headers.update(headers or {})
    return response


def error_response(
    status: int, message: str | None = None, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """An OpenRouter error response."""
    return json_response(status, error_body(status, message), headers=headers)


def status_fault_response(fault: StatusFault) -> web.Response:
    """The error a ``StatusFault`` asks for, with its retry headers."""
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = _number(fault.retry_after)
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = _number(fault.retry_after_ms)
    return error_response(fault.status, fault.message, headers=headers)


def drop_connection(request: web.Request) -> web.Response:
    """Close the request's connection; the returned response is never sent."""
    # aiohttp then fails to write it, takes that as a client that went away, and stays quiet.
    _close_connection(request)
    return web.Response()


async def bad_body(
    request: web.Request, fault: MalformedBodyFault | WrongShapeFault, *, stream: bool
) -> web.StreamResponse:
    """A 200 whose body, or whose stream's data line, is not a chat completion."""
    payload = MALFORMED_BODY if isinstance(fault, MalformedBodyFault) else WRONG_SHAPE_BODY
    if not stream:
        return json_response(200, payload)
    response = _event_stream(generation_id=None)
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write(SSE_PROCESSING + b"data: " + payload + b"\n\n" + SSE_DONE)
        await response.write_eof()
    return response


def failed_generation(answer: Answer, fault: GenerationErrorFault) -> dict[str, Any]:
    """OpenRouter's 200 for a generation that failed part-way: its choice finishes with
    ``"error"`` and carries the error, beside half the content and the usage."""
    body = answer.completion()
    choice = body["choices"][0]
    choice["message"]["content"] = answer.content[: len(answer.content) // 2]
    choice["finish_reason"] = choice["native_finish_reason"] = "error"
    choice["error"] = error_body(fault.status, fault.message)["error"]
    return body


async def echo_authorization(
    request: web.Request, fault: EchoAuthorizationFault, *, stream: bool
) -> web.StreamResponse:
    """The error an ``EchoAuthorizationFault`` asks for, quoting the request's credentials."""
    sent = request.headers.get("Authorization", "")
    key = sent.partition(" ")[2] or sent
    message = f"Incorrect API key provided: {key}. You sent 'Authorization: {sent}'."
    if fault.shape == "text":
        return web.Response(status=fault.status, text=message, content_type="text/plain")
    if fault.shape == "header":
        echoed = {"x-request-id": key, "X-Echo-Authorization": sent}
        return error_response(fault.status, headers=echoed)
    if fault.shape == "json" or not stream:
        return error_response(fault.status, message)
    envelope = {"id": "gen-echo", "object": "chat.completion.chunk", "model": "echo"}
    opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    failing = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
    response = _event_stream(generation_id=None)
    with contextlib.suppress(ConnectionResetError):
        await response.prepare(request)
        await response.write(
            SSE_PROCESSING
            + sse_event({**envelope, "choices": [opening]})
            + sse_event({**envelope, **error_body(fault.status, message), "choices": [failing]})
        )
        await response.write_eof()
    return response


async def send_stream(
    request: web.Request,
    endpoint: FakeEndpoint,
    answer: Answer,
    fault: StreamErrorFault | DropConnectionFault | EarlyDoneFault | None,
    *,
    include_usage: bool = True,
) -> web.StreamResponse:
    """Send ``answer`` as an OpenRouter event stream, cut short by ``fault`` if given,
    with a usage chunk at the end when ``include_usage``.

    Counts the completion in ``endpoint.completions`` when the stream is sent in full.
    """
    chunks = answer.stream(include_usage=include_usage)
    cut = None
    if isinstance(fault, EarlyDoneFault) and fault.after_chunks is None:
        cut = 0  # [DONE] before any chunk
    elif fault is not None:
        # After the role chunks and `after_chunks` content chunks, or just before the finish
        # chunks when the reply has fewer; the finish (and usage) chunks come last.
        choices = len(answer.replies)
        deltas = len(chunks) - 2 * choices - (1 if include_usage else 0)
        cut = choices + min(fault.after_chunks or 0, deltas)
    response = _event_stream(generation_id=answer.id)
    try:
        await response.prepare(request)
        await response.write(SSE_PROCESSING)
        for index, chunk in enumerate(chunks):
            await endpoint.stream_gate(index)
            if index == cut:
                if isinstance(fault, StreamErrorFault):
                    await response.write(sse_event(answer.error_chunk(fault.status, fault.message)))
                    await response.write_eof()
                elif isinstance(fault, EarlyDoneFault):
                    await response.write(SSE_DONE)
                    await response.write_eof()
                else:
                    _close_connection(request)
                return response
            if index == len(chunks) - 1:
                # Counted before the last bytes leave, so a client that has read the whole
                # stream always sees the count.
                endpoint.completions += 1
            await response.write(sse_event(chunk))
        await response.write(SSE_DONE)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client hung up mid-stream; nobody is left to tell
    return response


def _event_stream(*, generation_id: str | None) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    response.headers["x-request-id"] = _request_id()
    if generation_id is not None:
        response.headers["X-Generation-Id"] = generation_id
    return response


def _close_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


def _request_id() -> str:
    return f"req-{secrets.token_hex(12)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)

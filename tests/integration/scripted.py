"""An upstream that streams exactly the chunks a test scripts, over loopback: for wire
shapes the FakeGateway does not send (envelope fields on some chunks only, stream-only
fields, streams that end with ``[DONE]`` before they are whole)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from tests.loopback import served

ENVELOPE = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> dict[str, Any]:
    """A chunk of one choice, with the usual envelope."""
    return {**ENVELOPE, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def raw_event(delta: bytes, finish: str | None = None) -> bytes:
    """The SSE event of a chunk of one choice whose ``delta`` is the JSON given, as is
    (escapes orjson never writes: a lone surrogate)."""
    reason = b"null" if finish is None else b'"%s"' % finish.encode()
    envelope = orjson.dumps(ENVELOPE)[1:-1]
    choice = b'{"index":0,"delta":%s,"finish_reason":%s}' % (delta, reason)
    return b'data: {%s,"choices":[%s]}\n\n' % (envelope, choice)


def usage_chunk() -> dict[str, Any]:
    """The usage-only last chunk of a stream that asked for usage."""
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    return {**ENVELOPE, "choices": [], "usage": usage}


def completion(n: int = 1) -> dict[str, Any]:
    """A whole plain answer of ``n`` choices."""
    message = {"role": "assistant", "content": "The whole answer."}
    choices = [
        {"index": i, "message": message, "finish_reason": "stop", "logprobs": None}
        for i in range(n)
    ]
    return {**ENVELOPE, "object": "chat.completion", "choices": choices}


class ScriptedUpstream:
    """Answers every stream request with ``script`` (each item an event's data: a chunk,
    or raw bytes sent as they are), then ``[DONE]``; a plain request with ``plain``, or
    else a whole answer of the ``n`` choices it asks for.

    Attributes:
        script: what the next stream sends.
        plain: what the next plain request is answered, when set.
        before_done: when set, streams wait for it before their ``[DONE]``.
        ending: the bytes a stream ends with, as they are (``[DONE]`` and its blank
            line unless changed: a body can end inside an event).
        bodies: the request bodies received, in order.
    """

    def __init__(self) -> None:
        self.script: list[dict[str, Any] | bytes] = []
        self.plain: dict[str, Any] | None = None
        self.before_done: asyncio.Event | None = None
        self.ending = b"data: [DONE]\n\n"
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    @property
    def calls(self) -> int:
        """Requests received."""
        return len(self.bodies)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if body.get("stream") is not True:
            return web.json_response(self.plain or completion(body.get("n") or 1))
        response = web.StreamResponse(status=200)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for item in self.script:
            data = item if isinstance(item, bytes) else b"data: " + orjson.dumps(item) + b"\n\n"
            await response.write(data)
        if self.before_done is not None:
            await self.before_done.wait()
        await response.write(self.ending)
        await response.write_eof()
        return response


@asynccontextmanager
async def scripted_upstream() -> AsyncIterator[ScriptedUpstream]:
    """A ``ScriptedUpstream`` serving ``POST {url}/chat/completions`` on loopback."""
    upstream = ScriptedUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream._serve)
    async with served(app) as url:
        upstream.url = url + "/v1"
        yield upstream


@asynccontextmanager
async def refusing_upstream(
    status: int, error: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[str]:
    """An upstream answering every POST (chat, embeddings, streamed or not) with
    ``status``, the body ``{"error": error}`` and ``headers``; yields its ``/v1`` URL."""

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": error}, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/{route:.*}", refuse)
    async with served(app) as url:
        yield url + "/v1"

"""Anthropic's Messages API as a ``FakeGateway`` passes it through:
``POST /{endpoint}/anthropic/v1/messages``, whole or streamed.

Usage is in Anthropic's dialect (``input_tokens`` excluding cache reads and writes).
Cache reads and writes come from the endpoint's ``prompt_cache`` model, given the request
in chat-completion shape (``system`` as a leading system message, blocks and their
``cache_control`` kept). Errors take Anthropic's shape.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from limpet.testing.content import compose_reply, stream_pieces, truncate_to_tokens
from limpet.testing.native_requests import admit, dumps, json_body, reply_rng
from limpet.testing.provider_cache import PromptCacheRefusal
from limpet.testing.tokens import count_prompt_tokens, count_tokens

if TYPE_CHECKING:
    from limpet.testing.gateway import FakeGateway

_ANTHROPIC_ERROR = {
    400: "invalid_request_error",
    401: "authentication_error",
    503: "overloaded_error",
}


class AnthropicMessages:
    """The Messages API of every endpoint of ``gateway``."""

    __slots__ = ("_gateway",)

    def __init__(self, gateway: FakeGateway) -> None:
        self._gateway = gateway

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """``POST /{endpoint}/anthropic/v1/messages``."""
        endpoint, refusal = admit(self._gateway, request, anthropic_error)
        if refusal is not None:
            return refusal
        assert endpoint is not None
        body = await json_body(request)
        problem = _messages_problem(body)
        if problem is not None:
            return anthropic_error(400, problem)
        assert isinstance(body, dict)
        chat = _as_chat(body)
        model: str = body["model"]
        prompt_tokens = count_prompt_tokens(chat)
        try:
            cache = endpoint.prompt_cache.account(
                model, chat, prompt_tokens, now=self._gateway.clock()
            )
        except PromptCacheRefusal as refusal:
            return anthropic_error(400, str(refusal))
        text, cut = truncate_to_tokens(compose_reply(reply_rng(chat)), body["max_tokens"])
        written = cache.cache_write_tokens
        usage = {
            "input_tokens": prompt_tokens - cache.total,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": cache.cached_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": written - cache.cache_write_1h_tokens,
                "ephemeral_1h_input_tokens": cache.cache_write_1h_tokens,
            },
            "output_tokens": count_tokens(text),
        }
        message = {
            "id": f"msg_{secrets.token_hex(12)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "max_tokens" if cut else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream") is True:
            return await _send_events(request, _message_events(message))
        return web.json_response(message, dumps=dumps)


def _messages_problem(body: object) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: expected 'user' or 'assistant'"
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: expected a string or a list of text blocks"
    return None


def _as_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Messages request in chat-completion shape, for the tokenizer and the prompt
    cache: ``system`` becomes a leading system message, blocks stay as they are."""
    messages: list[Any] = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    messages.extend(body["messages"])
    chat = {key: value for key, value in body.items() if key not in ("system", "messages")}
    chat["messages"] = messages
    return chat


def _message_events(message: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Messages stream: ``message_start`` carries the input usage, ``message_delta`` the
    cumulative output tokens, as Anthropic sends them."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage, "output_tokens": 1},
    }
    text = message["content"][0]["text"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events.extend(
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
        for piece in stream_pieces(text)
    )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


async def _send_events(
    request: web.Request, events: list[tuple[str, dict[str, Any]]]
) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    for name, data in events:
        await response.write(
            b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        )
    await response.write_eof()
    return response


def anthropic_error(status: int, message: str) -> web.Response:
    """An error in Anthropic's shape."""
    kind = _ANTHROPIC_ERROR.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, dumps=dumps)

"""The OpenAI/OpenRouter wire format as the fake gateway speaks it.

Request checks, completion and chunk bodies, OpenRouter error bodies and SSE framing,
all pure, so the server in ``gateway.py`` only decides which to send and when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from limpet.testing.content import stream_pieces
from limpet.testing.provider_cache import PromptCacheResult

__all__ = [
    "SSE_DONE",
    "SSE_PROCESSING",
    "Answer",
    "error_body",
    "max_completion_tokens",
    "request_problem",
    "sse_event",
    "usage_body",
]

#: OpenRouter opens every stream with this comment, to keep proxies from timing it out.
SSE_PROCESSING = b": OPENROUTER PROCESSING\n\n"
SSE_DONE = b"data: [DONE]\n\n"

_DEFAULT_MESSAGES = {
    400: "Bad request",
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Forbidden",
    404: "Not found",
    408: "Request timed out",
    429: "Rate limit exceeded",
    500: "Internal server error",
    502: "Provider returned error",
    503: "No endpoints available for this model",
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """An OpenRouter error body: ``{"error": {"code": status, "message": ...}}``."""
    if message is None:
        message = _DEFAULT_MESSAGES.get(status) or _phrase(status)
    return {"error": {"code": status, "message": message}}


def request_problem(body: object) -> str | None:
    """What is wrong with a chat-completion request body, or None when a gateway takes it."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: expected a non-empty string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: expected a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{index}]: expected an object with a string role"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: expected a boolean"
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        return "temperature: expected a number from 0 to 2"
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (not _is_int(limit) or limit < 1):
            return f"{name}: expected a positive integer"
    return None


def max_completion_tokens(body: Mapping[str, Any]) -> int | None:
    """The completion limit a request sets, the tighter of the two fields when both are."""
    limits = [
        body[name] for name in ("max_tokens", "max_completion_tokens") if _is_int(body.get(name))
    ]
    return min(limits) if limits else None


def usage_body(
    *, prompt_tokens: int, completion_tokens: int, cache: PromptCacheResult, cost: float
) -> dict[str, Any]:
    """``usage`` in the OpenRouter dialect, ``cost`` included."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": cache.cached_tokens,
            "cache_write_tokens": cache.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
        "cost": cost,
    }


def sse_event(data: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass(frozen=True, slots=True)
class Answer:
    """One generated reply, ready to be sent whole or as a stream.

    Attributes:
        id: the generation id (``gen-...``), also sent as ``X-Generation-Id``.
        created: Unix time of the generation.
        model: the model that was requested.
        provider: the endpoint that answered.
        content: the reply text.
        finish_reason: ``"stop"``, or ``"length"`` when cut at the token limit.
        usage: the ``usage`` object, identical whole or streamed.
    """

    id: str
    created: int
    model: str
    provider: str
    content: str
    finish_reason: str
    usage: dict[str, Any]

    def completion(self) -> dict[str, Any]:
        """The ``chat.completion`` body."""
        return {
            **self._envelope("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                    "native_finish_reason": self.finish_reason,
                    "message": {"role": "assistant", "content": self.content, "refusal": None},
                }
            ],
            "usage": self.usage,
        }

    def chunk(self, delta: Mapping[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        """A ``chat.completion.chunk`` carrying one delta."""
        return {
            **self._envelope("chat.completion.chunk"),
            "choices": [
                {
                    "index": 0,
                    "delta": dict(delta),
                    "finish_reason": finish_reason,
                    "native_finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
        }

    def stream(self) -> list[dict[str, Any]]:
        """The whole stream before ``[DONE]``: role, content deltas, finish, then usage.

        The content deltas are a few words each and concatenate to ``content``.

        The chunks around the content carry the role, as OpenRouter's do. OpenRouter always
        sends usage, in a last chunk with empty ``choices``.
        """
        opening = {"role": "assistant", "content": ""}
        return [
            self.chunk(opening),
            *(self.chunk({"content": piece}) for piece in stream_pieces(self.content)),
            self.chunk(opening, self.finish_reason),
            {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage},
        ]

    def error_chunk(self, status: int, message: str) -> dict[str, Any]:
        """OpenRouter's mid-stream failure: an ``error`` and ``finish_reason: "error"``."""
        return {
            **self._envelope("chat.completion.chunk"),
            "error": {"code": status, "message": message},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "provider": self.provider,
        }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""The OpenAI/OpenRouter wire format as the fake gateway speaks it.

Request checks, completion and chunk bodies, OpenRouter error bodies and SSE framing,
all pure, so the server in ``gateway.py`` only decides which to send and when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from itertools import zip_longest
from typing import Any

import orjson

from limpet.testing.content import token_groups
from limpet.testing.provider_cache import PromptCacheResult

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


#: The most choices one request may ask for (``n``), as OpenAI allows.
MAX_CHOICES = 128


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
    choices = body.get("n")
    # OpenAI's bound: each choice is composed in the loop's own turn (--fake serves).
    if choices is not None and not (_is_int(choices) and 1 <= choices <= MAX_CHOICES):
        return f"n: expected an integer from 1 to {MAX_CHOICES}"
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        return "logprobs: expected a boolean"
    top = body.get("top_logprobs")
    if top is not None and not (_is_int(top) and 0 <= top <= 20 and body.get("logprobs")):
        return "top_logprobs: expected an integer from 0 to 20, with logprobs: true"
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return "stream_options: expected an object"
    return None


def stream_usage_requested(body: Mapping[str, Any]) -> bool:
    """Whether a request asks for usage in its stream, as OpenAI requires for sending it."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def token_logprob(token: str, alternatives: int = 0) -> dict[str, Any]:
    """A made-up but fixed log probability of ``token``, with ``alternatives`` top ones."""
    logprob = -(sum(token.encode()) % 97) / 32

    def entry(text: str, value: float) -> dict[str, Any]:
        return {"token": text, "logprob": value, "bytes": list(text.encode())}

    top = [
        entry(token if rank == 0 else f"{token}~{rank}", logprob - rank)
        for rank in range(alternatives)
    ]
    return {**entry(token, logprob), "top_logprobs": top}


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
class Reply:
    """One choice of an answer: its text and why it ended."""

    content: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Answer:
    """One generated reply, ready to be sent whole or as a stream.

    Attributes:
        id: the generation id (``gen-...``), also sent as ``X-Generation-Id``.
        created: Unix time of the generation.
        model: the model that was requested.
        provider: the endpoint that answered.
        content: the reply text (of the first choice).
        finish_reason: ``"stop"``, or ``"length"`` when cut at the token limit.
        usage: the ``usage`` object, identical whole or streamed.
        more: the choices after the first, for a request with ``n`` > 1.
        logprobs: None, or the number of ``top_logprobs`` for a request with ``logprobs``.
    """

    id: str
    created: int
    model: str
    provider: str
    content: str
    finish_reason: str
    usage: dict[str, Any]
    more: tuple[Reply, ...] = ()
    logprobs: int | None = None

    @property
    def replies(self) -> tuple[Reply, ...]:
        """Every choice, in ``index`` order."""
        return (Reply(self.content, self.finish_reason), *self.more)

    def completion(self) -> dict[str, Any]:
        """The ``chat.completion`` body."""
        return {
            **self._envelope("chat.completion"),
            "choices": [
                {
                    "index": index,
                    "logprobs": self._logprobs(token_groups(reply.content)),
                    "finish_reason": reply.finish_reason,
                    "native_finish_reason": reply.finish_reason,
                    "message": {"role": "assistant", "content": reply.content, "refusal": None},
                }
                for index, reply in enumerate(self.replies)
            ],
            "usage": self.usage,
        }

    def chunk(
        self,
        delta: Mapping[str, str | None],
        finish_reason: str | None = None,
        *,
        index: int = 0,
        tokens: list[str] | None = None,
    ) -> dict[str, Any]:
        """A ``chat.completion.chunk`` carrying one delta of choice ``index`` (and the
        logprobs of its ``tokens``, when asked for)."""
        return {
            **self._envelope("chat.completion.chunk"),
            "choices": [
                {
                    "index": index,
                    "delta": dict(delta),
                    "finish_reason": finish_reason,
                    "native_finish_reason": finish_reason,
                    "logprobs": self._logprobs([tokens] if tokens else []),
                }
            ],
        }

    def stream(self, *, include_usage: bool = True) -> list[dict[str, Any]]:
        """The whole stream before ``[DONE]``: role, content deltas, finish, then usage.

        The content deltas are a few words each and concatenate to ``content``. With
        ``n`` > 1 each chunk carries one choice and the choices take turns, as OpenAI's
        do. The chunks around the content carry the role, as OpenRouter's do. Usage comes
        in a last chunk with empty ``choices`` when ``include_usage`` (OpenRouter always
        sends it; OpenAI only when ``stream_options.include_usage`` asks).
        """
        opening = {"role": "assistant", "content": "", "refusal": None}
        replies = self.replies
        per_choice = [
            [
                self.chunk({"content": "".join(group)}, index=index, tokens=group)
                for group in token_groups(reply.content)
            ]
            for index, reply in enumerate(replies)
        ]
        deltas = [chunk for turn in zip_longest(*per_choice) for chunk in turn if chunk]
        chunks = [
            *(self.chunk(opening, index=index) for index in range(len(replies))),
            *deltas,
            *(self.chunk(opening, r.finish_reason, index=i) for i, r in enumerate(replies)),
        ]
        if include_usage:
            chunks.append(
                {**self._envelope("chat.completion.chunk"), "choices": [], "usage": self.usage}
            )
        return chunks

    def _logprobs(self, groups: list[list[str]]) -> dict[str, Any] | None:
        if self.logprobs is None:
            return None
        tokens = [token_logprob(token, self.logprobs) for group in groups for token in group]
        return {"content": tokens, "refusal": None}

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

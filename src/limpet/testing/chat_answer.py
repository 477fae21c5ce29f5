"""The answer of a ``FakeGateway`` endpoint to a valid chat request: its choices, usage
and cost, and how long the endpoint takes to give it."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

from limpet.testing.catalog import ModelPrice
from limpet.testing.content import compose_reply, content_seed, truncate_to_tokens
from limpet.testing.endpoint import FakeEndpoint
from limpet.testing.tokens import count_prompt_tokens, count_tokens
from limpet.testing.wire import Answer, Reply, max_completion_tokens, usage_body


def answer_chat(
    endpoint: FakeEndpoint,
    body: dict[str, Any],
    *,
    price: ModelPrice,
    now: float,
    rng: Callable[[int | None], random.Random],
) -> tuple[Answer, float]:
    """The reply to a valid request, and how long the endpoint takes to give it.

    Args:
        endpoint: the endpoint answering (its prompt cache accounts the prompt).
        body: the request.
        price: the model's price, for the usage's ``cost``.
        now: the gateway's clock.
        rng: the reply RNG for a seed (None: the gateway's next sampled draw).

    Raises:
        ValueError: the endpoint's prompt-cache model reported more than the prompt.
    """
    model: str = body["model"]
    prompt_tokens = count_prompt_tokens(body)
    cache = endpoint.prompt_cache.account(model, body, prompt_tokens, now=now)
    if cache.total > prompt_tokens:
        raise ValueError(f"{endpoint.prompt_cache!r} reported {cache} of {prompt_tokens}")
    seed = content_seed(body)
    limit = max_completion_tokens(body)
    replies = []
    for index in range(body.get("n") or 1):  # each choice its own draw, as with a model
        text, cut = truncate_to_tokens(
            compose_reply(rng(None if seed is None else seed + index)), limit
        )
        replies.append(Reply(text, "length" if cut else "stop"))
    completion_tokens = sum(count_tokens(reply.content) for reply in replies)
    cost = price.cost(
        uncached=prompt_tokens - cache.total,
        completion=completion_tokens,
        cached=cache.cached_tokens,
        written=cache.cache_write_tokens,
        written_1h=cache.cache_write_1h_tokens,
    )
    usage = usage_body(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cache=cache,
        cost=cost,
    )
    answer = Answer(
        id=f"gen-{int(now)}-{secrets.token_hex(10)}",
        created=int(now),
        model=model,
        provider=cache.provider or endpoint.name,
        content=replies[0].content,
        finish_reason=replies[0].finish_reason,
        usage=usage,
        more=tuple(replies[1:]),
        logprobs=(body.get("top_logprobs") or 0) if body.get("logprobs") else None,
    )
    return answer, endpoint.latency_for(cache, prompt_tokens)

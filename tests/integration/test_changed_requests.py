"""A caller that changes its request while its call runs (a message dict reused for the
next question, a conversation another task appends to) never has an answer stored under
another request's key: what is keyed is what is sent. The change is made after every
number of event-loop turns of the call, from its first step (turn 1: the call's task
runs up to its first await) until it has finished, in a memory tier and with Redis behind
it (more awaits between keying and sending)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from limpet import (
    CacheStatus,
    Client,
    Completion,
    Endpoint,
    MemoryCache,
    RedisCache,
    TieredCache,
)
from limpet.pipeline.keys import LARGE_MESSAGE_COUNT
from limpet.testing import FakeGateway
from tests.integration.cancel_sweep import MAX_ROUNDS, turns
from tests.integration.chat import MODEL, ask

EMBED_MODEL = "openai/text-embedding-3-small"

TIERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=TIERS)
async def client(request: pytest.FixtureRequest, gateway: FakeGateway) -> AsyncIterator[Client]:
    tiers: list[Any] = [MemoryCache()]
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        tiers.append(RedisCache.from_url(url, prefix=prefix, read_timeout=1.0, write_timeout=1.0))
    endpoint = Endpoint("a", gateway.base_url("a"))
    async with Client(endpoints=[endpoint], cache=TieredCache(*tiers)) as c:
        yield c


async def truth(client: Client, messages: list[dict[str, Any]]) -> str | None:
    """What the gateway answers ``messages`` (asked afresh, neither read nor stored)."""
    answer = await client.complete(model=MODEL, messages=messages, temperature=0, cache="bypass")
    return answer.content


async def served(client: Client, messages: list[dict[str, Any]]) -> str | None:
    """What the cache serves ``messages``, or the gateway's answer when it holds none."""
    return (await client.complete(model=MODEL, messages=messages, temperature=0)).content


async def streamed(client: Client, request: dict[str, Any]) -> Completion:
    """``request`` through ``stream()``, read to its end: the completion it assembled."""
    stream = client.stream(**request)
    async for _ in stream:
        pass
    assert stream.completion is not None
    return stream.completion


@pytest.mark.parametrize("how", ["complete", "stream"])
async def test_a_message_changed_at_any_turn_is_never_the_answer_to_the_question_asked(
    client: Client, gateway: FakeGateway, how: str
) -> None:
    unsent_when_changed = 0
    for k in range(1, MAX_ROUNDS):
        question, other = f"{k}: what is the capital of France?", f"{k}: a poem about cats?"
        message = {"role": "user", "content": question}
        request = ask(question) | {"messages": [message]}
        calls = gateway.total_calls
        asking = client.complete(**request) if how == "complete" else streamed(client, request)
        call = asyncio.create_task(asking)
        await turns(k)
        finished = call.done()
        unsent_when_changed += gateway.total_calls == calls
        message["content"] = other  # the caller reuses its dict for the next question
        answered = await call
        assert answered.cache is CacheStatus.MISS
        assert answered.content == await truth(client, [{"role": "user", "content": question}])
        for text in (question, other):
            asked = [{"role": "user", "content": text}]
            assert await served(client, asked) == await truth(client, asked), (k, text)
        if finished:
            break
    assert unsent_when_changed >= 2  # the change reached calls before they were sent


async def test_a_large_conversation_changed_while_it_is_keyed_is_stored_under_its_own_key(
    client: Client, gateway: FakeGateway
) -> None:
    count = LARGE_MESSAGE_COUNT + 100  # keyed piece by piece, yielding in between
    unsent_when_changed = 0
    for k in range(1, MAX_ROUNDS):
        history = [{"role": "user", "content": f"{k}: turn {i}"} for i in range(count)]
        before = [dict(message) for message in history]
        calls = gateway.total_calls
        call = asyncio.create_task(client.complete(**ask() | {"messages": history}))
        await turns(k)
        finished = call.done()
        unsent_when_changed += gateway.total_calls == calls
        history[-1]["content"] = f"{k}: changed"  # another task edits the conversation
        history.append({"role": "user", "content": f"{k}: appended"})
        after = [dict(message) for message in history]
        answered = await call
        assert answered.content in (await truth(client, before), await truth(client, after[:-1]))
        for messages in (before, after[:-1], after):
            assert await served(client, messages) == await truth(client, messages), k
        if finished:
            break
    assert unsent_when_changed >= 2


async def test_an_embed_param_changed_at_any_turn_never_stores_vectors_under_another_key(
    client: Client, gateway: FakeGateway
) -> None:
    # A nested field (``provider``) is keyed per input and written to the wire later, in
    # a send task of its own: it is sent as it was keyed, whatever the caller does to its
    # dict meanwhile.
    unsent_when_changed = 0
    for k in range(1, MAX_ROUNDS):
        text = f"{k}: a limpet"
        params: dict[str, Any] = {"provider": {"order": ["azure"]}}
        calls = gateway.embeddings.calls
        call = asyncio.create_task(client.embed(model=EMBED_MODEL, input=[text], **params))
        await turns(k)
        finished = call.done()
        unsent_when_changed += gateway.embeddings.calls == calls
        params["provider"]["order"] = ["openai"]  # the caller reuses its dict
        await call
        assert gateway.embeddings.requests[-1]["provider"] == {"order": ["azure"]}, k
        asked = await client.embed(model=EMBED_MODEL, input=[text], provider={"order": ["openai"]})
        assert (asked.hits, asked.misses) == (0, 1), k  # never asked for before
        if finished:
            break
    assert unsent_when_changed >= 2

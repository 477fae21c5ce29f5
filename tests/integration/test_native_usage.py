"""Anthropic's native Messages API through the FakeGateway: its usage dialect, whole and
streamed, normalised to the same Usage as the gateway's own OpenRouter dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from limpet.providers.usage import StreamUsage, response_usage
from limpet.testing import FakeGateway
from limpet.testing.provider_cache import ProviderPromptCache

MODEL = "anthropic/claude-sonnet-4.6"
MANUAL = "Limpets cling to rocks with a muscular foot. " * 100  # 4,500 chars

pytestmark = pytest.mark.gateway(endpoints=("a", "b"), prompt_cache=ProviderPromptCache)


def messages_body(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 256,
        "temperature": 0,
        "system": [{"type": "text", "text": MANUAL, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": question}],
        **extra,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_anthropic_usage_excludes_cache_reads_and_writes_from_input(
    gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    url = gateway.url + "/a/anthropic/v1/messages"
    first = await post(session, url, messages_body("What holds a limpet on?"))
    second = await post(session, url, messages_body("What do limpets eat?"))
    assert first["type"] == "message" and first["content"][0]["type"] == "text"
    wrote, read = first["usage"], second["usage"]
    assert wrote["cache_creation_input_tokens"] > 1024 and wrote["cache_read_input_tokens"] == 0
    assert read["cache_read_input_tokens"] == wrote["cache_creation_input_tokens"]
    assert read["cache_creation_input_tokens"] == 0
    for raw, message in ((wrote, first), (read, second)):
        usage = response_usage(message)
        # input_tokens is only the uncached part; the total adds reads and writes once each.
        assert usage.uncached_tokens == raw["input_tokens"] < 20
        assert usage.prompt_tokens == (
            raw["input_tokens"]
            + raw["cache_read_input_tokens"]
            + raw["cache_creation_input_tokens"]
        )


async def test_the_same_call_in_either_dialect_gives_the_same_usage(
    gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    native = await post(session, gateway.url + "/a/anthropic/v1/messages", messages_body("Why?"))
    chat_body = {
        "model": MODEL,
        "max_tokens": 256,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": messages_body("")["system"]},
            {"role": "user", "content": "Why?"},
        ],
    }
    chat = await post(session, gateway.base_url("b") + "/chat/completions", chat_body)
    assert response_usage(native) == response_usage(chat)
    assert response_usage(native).cache_write_tokens > 1024


async def test_a_streamed_message_reports_the_same_usage(
    gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    whole = await post(session, gateway.url + "/a/anthropic/v1/messages", messages_body("Hm?"))
    url = gateway.url + "/b/anthropic/v1/messages"
    events: list[dict[str, Any]] = []
    async with session.post(url, json=messages_body("Hm?", stream=True)) as response:
        assert response.content_type == "text/event-stream"
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(orjson.loads(line[6:]))
    assert [e["type"] for e in (events[0], events[-2], events[-1])] == [
        "message_start",
        "message_delta",
        "message_stop",
    ]
    acc = StreamUsage()
    for event in events:
        acc.feed(event)
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == whole["content"][0]["text"]
    assert acc.usage == response_usage(whole)


async def test_native_errors_use_anthropics_shape(
    gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    url = gateway.url + "/a/anthropic/v1/messages"
    async with session.post(url, json={"model": MODEL, "messages": []}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    gateway.endpoint("a").take_down()
    async with session.post(url, json=messages_body("?")) as response:
        assert response.status == 503
    async with session.post(gateway.url + "/zz/anthropic/v1/messages", json={}) as response:
        assert response.status == 404

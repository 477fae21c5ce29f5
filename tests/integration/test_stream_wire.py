"""Streams of wire shapes the FakeGateway does not send, from a scripted upstream over
loopback: what is served later (replayed, assembled) is what the live stream was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from limpet import CacheStatus, Client, Completion, Endpoint, RetryConfig
from limpet.errors import APIResponseError
from limpet.http.stream_events import stream_events
from tests.integration.chat import ask
from tests.integration.scripted import ScriptedUpstream, chunk, scripted_upstream, usage_chunk


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with scripted_upstream() as scripted:
        yield scripted


async def test_an_event_past_the_cap_is_a_malformed_answer(upstream: ScriptedUpstream) -> None:
    upstream.script = [chunk({"content": "fine"}), chunk({"content": "x" * 4096})]
    endpoint = Endpoint("a", upstream.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{upstream.url}/chat/completions", json={}) as response,
    ):
        with pytest.raises(APIResponseError, match="max_event_bytes") as info:
            async for _ in stream_events(response, endpoint, max_event_bytes=1024):
                pass
    assert info.value.endpoint == "a"


async def collect(client: Client, **params: Any) -> tuple[list[dict[str, Any]], Completion]:
    stream = client.stream(**ask(), **params)
    chunks = [c.raw async for c in stream]
    assert stream.completion is not None
    return chunks, stream.completion


def open_client(upstream: ScriptedUpstream) -> Client:
    return Client(endpoints=[Endpoint("a", upstream.url)], retry=RetryConfig(max_attempts=1))


async def test_a_replay_carries_the_envelope_fields_of_each_live_chunk_alone(
    upstream: ScriptedUpstream,
) -> None:
    first = {**chunk({"role": "assistant", "content": ""}), "system_fingerprint": "fp_1"}
    upstream.script = [
        first,
        {**chunk({"content": "Hi"}), "obfuscation": "abc"},
        chunk({}, "stop"),
        usage_chunk(),
    ]
    async with open_client(upstream) as client:
        live, _ = await collect(client)
        replayed, completion = await collect(client)
        hit = await client.complete(**ask())
    assert completion.cache is CacheStatus.HIT
    assert replayed == live == upstream.script
    assert "obfuscation" not in hit.raw and hit.content == "Hi"
    assert upstream.calls == 1

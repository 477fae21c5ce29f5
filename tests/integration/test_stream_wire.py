"""Streams of wire shapes the FakeGateway does not send, from a scripted upstream over
loopback: what is served later (replayed, assembled) is what the live stream was."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from limpet import Endpoint
from limpet.errors import APIResponseError
from limpet.http.stream_events import stream_events
from tests.integration.scripted import ScriptedUpstream, chunk, scripted_upstream


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

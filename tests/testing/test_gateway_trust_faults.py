"""The FakeGateway's trust faults over real loopback HTTP, driven by a plain aiohttp client:
a generation that fails inside a 200, an answer without usage, errors that echo the key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDictProxy

from limpet.testing import FakeGateway

Json = dict[str, Any]

KEY = "sk-or-v1-echo-0123456789abcdef"
SONNET = "anthropic/claude-sonnet-4.6"


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway(endpoints=("a",), api_key=KEY) as gateway:
        yield gateway


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def chat(**fields: Any) -> Json:
    return {
        "model": SONNET,
        "messages": [{"role": "user", "content": "Say hi."}],
        "temperature": 0,
        **fields,
    }


async def post(
    session: aiohttp.ClientSession, gw: FakeGateway, body: Json
) -> tuple[int, CIMultiDictProxy[str], str]:
    async with session.post(
        f"{gw.base_url('a')}/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    ) as response:
        return response.status, response.headers, await response.text()


def data_chunks(text: str) -> list[Json]:
    return [
        orjson.loads(event.removeprefix("data: "))
        for event in text.strip().split("\n\n")
        if event.startswith("data: ") and event != "data: [DONE]"
    ]


async def test_a_generation_error_is_a_200_whose_choice_finished_in_error(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    whole = orjson.loads((await post(session, gw, chat()))[2])
    gw.endpoint("a").generation_error(status=503, message="provider fell over")
    status, _, text = await post(session, gw, chat())
    body = orjson.loads(text)
    choice = body["choices"][0]
    assert status == 200
    assert choice["finish_reason"] == "error"
    assert choice["error"] == {"code": 503, "message": "provider fell over"}
    assert whole["choices"][0]["message"]["content"].startswith(choice["message"]["content"])
    assert body["usage"] == whole["usage"]
    assert gw.endpoint("a").completions == 1  # the failed one is not a completion


async def test_a_generation_error_in_a_stream_is_an_error_chunk_after_the_first(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    gw.endpoint("a").generation_error()
    status, _, text = await post(session, gw, chat(stream=True))
    chunks = data_chunks(text)
    assert status == 200 and "[DONE]" not in text
    assert len(chunks) == 2
    assert chunks[-1]["error"]["code"] == 502
    assert chunks[-1]["choices"][0]["finish_reason"] == "error"


async def test_omit_usage_leaves_usage_out_of_an_answer_and_a_stream(
    gw: FakeGateway, session: aiohttp.ClientSession
) -> None:
    ep = gw.endpoint("a")
    ep.omit_usage(times=2)
    plain = orjson.loads((await post(session, gw, chat()))[2])
    streamed = data_chunks((await post(session, gw, chat(stream=True)))[2])
    assert "usage" not in plain and plain["choices"][0]["finish_reason"] == "stop"
    assert streamed and all("usage" not in chunk for chunk in streamed)
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in orjson.loads((await post(session, gw, chat()))[2])  # one fault each
    assert ep.completions == 3


@pytest.mark.parametrize(
    ("shape", "stream", "status"),
    [
        ("json", False, 401),
        ("text", False, 401),
        ("header", False, 401),
        ("sse", True, 200),
        ("sse", False, 401),  # nothing streamed: the JSON shape
    ],
)
async def test_echo_authorization_sends_the_key_back_in_each_shape(
    gw: FakeGateway, session: aiohttp.ClientSession, shape: Any, stream: bool, status: int
) -> None:
    gw.endpoint("a").echo_authorization(shape)
    got, headers, text = await post(session, gw, chat(stream=stream))
    assert got == status
    if shape == "header":
        assert headers["x-request-id"] == KEY
        assert headers["X-Echo-Authorization"] == f"Bearer {KEY}"
        assert KEY not in text
    else:
        assert KEY in text and f"Bearer {KEY}" in text
    if shape == "text":
        assert headers["Content-Type"].startswith("text/plain")
    if shape == "sse" and stream:
        failing = data_chunks(text)[-1]
        assert failing["error"]["code"] == 401
        assert failing["choices"][0]["finish_reason"] == "error"


def test_echo_arguments_are_checked(gw: FakeGateway) -> None:
    ep = gw.endpoint("a")
    with pytest.raises(ValueError, match="shape"):
        ep.echo_authorization("xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="400-599"):
        ep.echo_authorization("json", status=200)
    assert ep.pending_faults == ()

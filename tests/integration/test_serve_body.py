"""``limpet serve`` reading a request's body: a caller whose body stalls or trickles
(slowloris) is answered 408 once the body deadline has passed, and its connection
closed, where it held the connection for as long as it liked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from limpet.serve import ServeConfig, create_app
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.loopback import served

DEADLINE = 0.2  # seconds: the proxy's body deadline here
LONG = 30.0  # seconds: a failure, not a hang
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test-a\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
)


@pytest.fixture
async def proxy(gateway: FakeGateway) -> AsyncIterator[str]:
    """The URL of a proxy in front of the gateway's endpoint ``"a"``, with a short body
    deadline."""
    config = ServeConfig(upstreams=(gateway.base_url("a"),), body_timeout=DEADLINE)
    async with served(create_app(config), access_log=None) as url:
        yield url


@contextlib.asynccontextmanager
async def slow_sender(
    url: str, first: bytes, *, trickle: bool
) -> AsyncIterator[asyncio.StreamReader]:
    """A connection to ``url`` that sends ``first`` and then nothing (or, with
    ``trickle``, a byte every 10 ms, each read by the proxy as it comes); yields what
    reads the proxy's side."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    dripping: asyncio.Task[None] | None = None
    try:
        writer.write(first)
        await writer.drain()
        if trickle:
            dripping = asyncio.create_task(_drip(writer))
        async with asyncio.timeout(LONG):
            yield reader
    finally:
        if dripping is not None:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await dripping
        writer.close()


async def answer_to_a_slow_body(
    url: str, *, trickle: bool
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send a chat request whose body never arrives whole (``slow_sender``): the status,
    headers and JSON body of the answer."""
    async with slow_sender(url, HEAD + b'{"model": ', trickle=trickle) as reader:
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines if line)
        payload = await reader.readexactly(int(headers["Content-Length"]))
    return int(status_line.split(" ", 2)[1]), headers, orjson.loads(payload)


async def _drip(writer: asyncio.StreamWriter) -> None:
    while True:  # the pace of the trickle, not a wait for anything
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
async def test_a_body_that_does_not_arrive_in_time_is_answered_408_and_the_connection_closed(
    proxy: str, gateway: FakeGateway, trickle: bool
) -> None:
    """The deadline is for the whole body, not for each read: a trickle that never stops
    for long is cut off as a stall is."""
    status, headers, body = await answer_to_a_slow_body(proxy, trickle=trickle)
    assert status == 408
    assert headers["Connection"] == "close"  # it carries no other request
    assert body == {
        "error": {
            "message": f"the request's body did not arrive whole within {DEADLINE:g} seconds",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    assert gateway.total_calls == 0


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
async def test_a_connection_whose_headers_do_not_arrive_in_time_is_closed(
    proxy: str, gateway: FakeGateway, trickle: bool
) -> None:
    """Headers sent in part and then stalled, or trickled: the connection is closed
    once the deadline has passed (aiohttp's own bound is an hour), nothing answered."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "
    async with slow_sender(proxy, head, trickle=trickle) as reader:
        assert await read_until_closed(reader) == b""  # closed by the proxy, unanswered
    assert gateway.total_calls == 0


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the proxy sent before it closed the connection. A close with bytes of the
    trickle still unread on its side is a reset (the kernel's RST, not a FIN): closed
    all the same, and whatever had arrived before it is in ``reader`` already."""
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            received += chunk
    return bytes(received)


async def test_a_body_that_arrives_in_time_is_served(proxy: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy}/v1/chat/completions",
            json=ask("in time"),
            headers={"Authorization": "Bearer sk-test-a"},
        ) as response,
    ):
        assert response.status == 200

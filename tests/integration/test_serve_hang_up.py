"""``limpet serve`` in-process, for what only the server's side can show: a caller who
hangs up is no fault of the proxy's (found by the proxy soak, ``test_soak_proxy.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from limpet.serve import ServeConfig, create_app
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.loopback import served


class Watched:
    """Events an outermost middleware of ``app`` sets as a request reaches it and as its
    handling ends, and the requests it saw."""

    def __init__(self, app: web.Application) -> None:
        self.arrived, self.handled = asyncio.Event(), asyncio.Event()
        self.requests: list[web.BaseRequest] = []

        @web.middleware
        async def outermost(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.requests.append(request)
            self.arrived.set()
            try:
                return await handler(request)
            finally:
                self.handled.set()

        app.middlewares.insert(0, outermost)


async def test_a_caller_hanging_up_before_its_stream_starts_is_not_logged_as_a_fault(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.hold_answers()
    app = create_app(ServeConfig(upstreams=(gateway.base_url("a"),)))
    watched = Watched(app)
    # As ``limpet serve`` runs: handlers run on after their caller hangs up.
    async with served(app, access_log=None) as url:
        try:
            async with asyncio.timeout(10):  # a failure, not a hang, if the proxy wedges
                _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":")[-1]))
                body = orjson.dumps(ask("hanging up", stream=True))
                head = (
                    f"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
                    f"Content-Length: {len(body)}"
                )
                writer.write(head.encode() + b"\r\nContent-Type: application/json\r\n\r\n" + body)
                await writer.drain()
                await watched.arrived.wait()  # the proxy waits for the stream's first chunk
                writer.close()
                await writer.wait_closed()
                transport = watched.requests[0].transport
                # Until the proxy has seen the hang-up; its transport has no event to wait on.
                while transport is not None and not transport.is_closing():  # noqa: ASYNC110
                    await asyncio.sleep(0)
                endpoint.release_answers()  # the first chunk comes: the proxy starts the stream
                await watched.handled.wait()
        finally:
            endpoint.release_answers()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
async def test_a_caller_hanging_up_with_its_body_still_coming_is_not_logged_as_a_fault(
    gateway: FakeGateway, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(ServeConfig(upstreams=(gateway.base_url("a"),)))
    watched = Watched(app)
    async with served(app, access_log=None) as url:
        async with asyncio.timeout(10):  # a failure, not a hang, if the proxy wedges
            _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":")[-1]))
            head = (
                f"POST {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer sk-a\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            writer.write(head.encode() + b'{"model": "m", ')  # 15 of the 1,000 bytes
            await writer.drain()
            await watched.arrived.wait()  # the handler reads the body
            writer.close()  # the caller gives up (a client timeout, a dropped link)
            await writer.wait_closed()
            await watched.handled.wait()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert gateway.total_calls == 0

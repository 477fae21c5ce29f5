"""Where a key or password once leaked, against real servers on loopback: an upstream that
echoes the key encoded, a 3xx to another origin (a second server records what it gets),
the proxy relaying its own key's refusal, ``/metrics`` behind the client keys, and a
call's headers of the wrong type."""

from __future__ import annotations

import contextlib
import logging
import re
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from limpet import Client, Endpoint, RetryConfig
from limpet.errors import APIError, APIStatusError, ConfigurationError, InvalidRequestError
from limpet.serve import ServeConfig
from limpet.serve.app import create_app
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.loopback import served
from tests.test_errors import encodings

KEY = "sk-or-v1-AB/cd+EFgh1234567890=="
PROXY_KEY = "ABSKQmVkcm9ja0FQSUtleS/abc+def0123456789=="
CLIENT_KEY = "sk-client-0123456789"
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.005)

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A real HTTP server on loopback that answers every request with ``answer`` and
    records what it received."""

    answer: Answer
    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.path_qs, dict(request.headers), body))
        return await self.answer(request)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Upstream]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(answer: Answer) -> Upstream:
            upstream = Upstream(answer)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", upstream.handle)
            upstream.url = await stack.enter_async_context(served(app))
            return upstream

        yield start


def answering(status: int, text: str, content_type: str = "text/plain") -> Answer:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type=content_type)

    return answer


def every_text(exc: BaseException) -> str:
    """Everything an error shows, its causes' included, and its traceback."""
    texts = [traceback.format_exception(exc)]
    seen: BaseException | None = exc
    while seen is not None:
        texts.append([str(seen), repr(seen), *map(str, seen.args)])
        texts.append([str(value) for value in vars(seen).values()])
        seen = seen.__cause__ or seen.__context__
    return "\n".join(line for group in texts for line in group)


def shown_forms(secret: str, text: str) -> list[str]:
    """The encodings of ``secret`` (``tests.test_errors.encodings``) found in ``text``."""
    return [
        name
        for name, form in encodings(secret).items()
        if re.search(re.escape(form), text, re.IGNORECASE)
    ]


# 1. A key echoed encoded is scrubbed everywhere


@pytest.mark.parametrize("encoding", sorted(encodings(KEY)))
@pytest.mark.parametrize(
    ("status", "template"),
    [(401, '{{"error": {{"message": "bad key {}"}}}}'), (200, '{{"choices": [], "echo": "{}"}}')],
    ids=["401", "200 wrong shape"],
)
async def test_a_key_echoed_encoded_shows_in_no_error_and_no_log(
    serve: Callable[[Answer], Awaitable[Upstream]],
    caplog: pytest.LogCaptureFixture,
    encoding: str,
    status: int,
    template: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    echoed = template.format(encodings(KEY)[encoding])
    upstream = await serve(answering(status, echoed, "application/json"))
    endpoint = Endpoint("a", upstream.url + "/v1", api_key=KEY)
    async with Client(endpoints=[endpoint], cache=None, retry=FAST_RETRY) as client:
        with pytest.raises(APIError) as raised:
            await client.complete(**ask())
    assert shown_forms(KEY, every_text(raised.value)) == []
    assert shown_forms(KEY, caplog.text) == []
    assert "***" in str(raised.value)


@pytest.fixture
async def proxied(
    serve: Callable[[Answer], Awaitable[Upstream]],
) -> AsyncIterator[Callable[[Answer], Awaitable[openai.AsyncOpenAI]]]:
    """The proxy with its own upstream key and a client key, in front of an upstream
    answering as told; an OpenAI client of it presenting the client key."""
    servers: list[TestServer] = []
    callers: list[openai.AsyncOpenAI] = []

    async def start(answer: Answer) -> openai.AsyncOpenAI:
        upstream = await serve(answer)
        config = ServeConfig(
            upstreams=(upstream.url + "/v1",),
            upstream_key=PROXY_KEY,
            client_keys=frozenset({CLIENT_KEY}),
        )
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        caller = openai.AsyncOpenAI(
            base_url=str(server.make_url("/v1")), api_key=CLIENT_KEY, max_retries=0
        )
        callers.append(caller)
        return caller

    yield start
    for caller in callers:
        await caller.close()
    for server in servers:
        await server.close()


@pytest.mark.parametrize("status", [401, 402, 403, 429])
async def test_a_refusal_of_the_proxys_own_key_never_relays_the_upstreams_text(
    proxied: Callable[[Answer], Awaitable[openai.AsyncOpenAI]], status: int
) -> None:
    # Hex: a form no scrubber knows. The proxy must not relay the refusal's text at all.
    echoed = f"no account for {PROXY_KEY.encode().hex()}"
    caller = await proxied(answering(status, echoed))
    with pytest.raises(openai.APIStatusError) as raised:
        await caller.chat.completions.create(**ask())
    assert raised.value.status_code == status
    shown = f"{raised.value} {raised.value.body}"
    assert PROXY_KEY.encode().hex() not in shown and "no account" not in shown
    assert "the upstream refused the proxy's own credentials" in shown


async def test_the_proxys_own_key_echoed_encoded_in_another_error_is_scrubbed(
    proxied: Callable[[Answer], Awaitable[openai.AsyncOpenAI]],
) -> None:
    echoed = f"upstream GET /auth?key={quote(PROXY_KEY, safe='')} failed"
    caller = await proxied(answering(502, echoed))
    with pytest.raises(openai.InternalServerError) as raised:
        await caller.chat.completions.create(**ask())
    shown = f"{raised.value} {raised.value.body}"
    assert shown_forms(PROXY_KEY, shown) == []
    assert "upstream GET /auth?key=*** failed" in shown


# 2. A base URL's query key is scrubbed, never shown (its userinfo: tests/test_urls.py)


async def test_a_query_key_of_the_base_url_is_scrubbed_and_not_in_the_repr(
    serve: Callable[[Answer], Awaitable[Upstream]],
) -> None:
    google_key = "AIzaSyA-0123456789abcdef"
    upstream = await serve(answering(400, f"API key not valid: {quote(google_key)}"))
    endpoint = Endpoint("a", f"{upstream.url}/v1?key={google_key}")
    assert google_key not in repr(endpoint) and "key=***" in repr(endpoint)
    async with Client(endpoints=[endpoint], cache=None) as client:
        with pytest.raises(APIStatusError) as raised:
            await client.complete(**ask())
    assert google_key in upstream.received[0].path  # it was sent
    assert google_key not in every_text(raised.value)
    assert "API key not valid: ***" in str(raised.value)


# 3. A call's headers of the wrong type are described without their values


@pytest.mark.parametrize(
    ("headers", "described"),
    [
        ({"Authorization": f"Bearer {KEY}".encode()}, "dict with Authorization: bytes"),
        ({"Authorization": f"Bearer {KEY}", "X-Attempt": 1}, "Authorization: str, X-Attempt: int"),
        ([("Authorization", f"Bearer {KEY}")], "list of 1 item"),
    ],
)
async def test_extra_headers_of_the_wrong_type_are_refused_without_their_values(
    headers: object, described: str
) -> None:
    async with Client(endpoints=[Endpoint("a", "http://127.0.0.1:9/v1")], cache=None) as client:
        with pytest.raises(InvalidRequestError) as raised:
            await client.complete(**ask(), extra_headers=headers)  # type: ignore[arg-type]
    assert KEY not in every_text(raised.value)
    assert described in str(raised.value)


def test_endpoint_headers_of_the_wrong_type_are_refused_without_their_values() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Endpoint("a", "http://127.0.0.1:9/v1", headers={"x-api-key": KEY.encode()})  # type: ignore[dict-item]
    assert KEY not in every_text(raised.value)
    assert "Endpoint.headers" in str(raised.value) and "x-api-key: bytes" in str(raised.value)


# 4. A redirect is never followed


@pytest.fixture
async def redirected(
    serve: Callable[[Answer], Awaitable[Upstream]],
) -> tuple[Upstream, Upstream]:
    """A gateway that answers every request with a 307 to another origin (``localhost``
    rather than ``127.0.0.1``), and that origin, which answers any chat request."""

    async def chat(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "gen-elsewhere",
                "object": "chat.completion",
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "from elsewhere"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        )

    elsewhere = await serve(chat)
    location = elsewhere.url.replace("127.0.0.1", "localhost") + "/collect"

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": location + request.path})

    return await serve(redirect), elsewhere


@pytest.mark.parametrize("stream", [False, True])
async def test_a_redirect_is_an_error_and_the_other_origin_receives_nothing(
    redirected: tuple[Upstream, Upstream], stream: bool
) -> None:
    gateway, elsewhere = redirected
    endpoint = Endpoint(
        "a", gateway.url + "/v1", api_key=KEY, headers={"x-api-key": "sk-ant-secret-0123456789"}
    )
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as client:
        for _ in range(2):
            with pytest.raises(APIStatusError) as raised:
                if stream:
                    async for _chunk in client.stream(**ask()):
                        pass
                else:
                    await client.complete(**ask())
            assert raised.value.status_code == 307
            assert "redirected" in str(raised.value) and "localhost" not in str(raised.value)
        with pytest.raises(APIStatusError):
            await client.complete(**ask("embed?"), extra_headers={"api-key": "per-call-secret"})
    assert elsewhere.received == []
    # Neither retried nor cached: each call asked the gateway once.
    assert len(gateway.received) == 3


async def test_the_proxys_models_listing_does_not_follow_a_redirect(
    redirected: tuple[Upstream, Upstream],
) -> None:
    gateway, elsewhere = redirected
    config = ServeConfig(upstreams=(gateway.url + "/v1",), upstream_key=PROXY_KEY)
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(str(server.make_url("/v1/models"))) as response,
        ):
            assert response.status == 502  # a redirect is no listing (nor followed)
            assert "localhost" not in await response.text()
    finally:
        await server.close()
    assert elsewhere.received == []


# 6. /metrics is for the client keys' holders


@pytest.mark.parametrize(
    ("client_keys", "authorization", "status"),
    [
        (frozenset({CLIENT_KEY}), None, 401),
        (frozenset({CLIENT_KEY}), "Bearer sk-someone-else", 401),
        (frozenset({CLIENT_KEY}), f"Bearer {CLIENT_KEY}", 200),
        (frozenset(), None, 200),
    ],
    ids=["no key", "another key", "a client key", "no client keys"],
)
async def test_metrics_answer_only_a_client_key_when_there_are_some(
    client_keys: frozenset[str], authorization: str | None, status: int
) -> None:
    async with FakeGateway(endpoints=("a",)) as gateway:
        config = ServeConfig(
            upstreams=(gateway.base_url("a"),),
            upstream_key="sk-upstream-0123456789",
            client_keys=client_keys,
            metrics=True,
        )
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server()
        headers = {} if authorization is None else {"Authorization": authorization}
        try:
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as s,
                s.post(str(server.make_url("/v1/chat/completions")), json=ask()) as call,
            ):
                assert call.status == 200
            async with (
                aiohttp.ClientSession() as session,
                session.get(str(server.make_url("/metrics")), headers=headers) as response,
            ):
                body = await response.text()
        finally:
            await server.close()
    assert response.status == status
    assert ("limpet_calls_total" in body) is (status == 200)
